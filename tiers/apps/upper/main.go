// Command upper copies its standard input to its standard output with
// every letter in upper case (Unicode simple case mapping, as
// unicode.ToUpper does). Bytes that are not valid UTF-8 pass through
// unchanged. It streams: input of any size passes through a fixed buffer.
package main

import (
	"fmt"
	"io"
	"os"
	"unicode"
	"unicode/utf8"
)

func main() {
	if err := upper(os.Stdout, os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "upper:", err)
		os.Exit(1)
	}
}

// upper writes r to w upper-cased. A character split between two reads is
// held back until the read that completes it.
func upper(w io.Writer, r io.Reader) error {
	buf := make([]byte, 64<<10)
	out := make([]byte, 0, 2*len(buf))
	carry := 0
	for {
		n, err := r.Read(buf[carry:])
		data := buf[:carry+n]
		keep := 0
		if err == nil {
			keep = incompleteTail(data)
		}
		out = appendUpper(out[:0], data[:len(data)-keep])
		if len(out) > 0 {
			if _, werr := w.Write(out); werr != nil {
				return werr
			}
		}
		carry = copy(buf, data[len(data)-keep:])
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// appendUpper appends p upper-cased to out, keeping invalid bytes as they
// are.
func appendUpper(out, p []byte) []byte {
	for i := 0; i < len(p); {
		if b := p[i]; b < utf8.RuneSelf {
			if 'a' <= b && b <= 'z' {
				b -= 'a' - 'A'
			}
			out = append(out, b)
			i++
			continue
		}
		r, size := utf8.DecodeRune(p[i:])
		if r == utf8.RuneError && size == 1 {
			out = append(out, p[i])
		} else {
			out = utf8.AppendRune(out, unicode.ToUpper(r))
		}
		i += size
	}
	return out
}

// incompleteTail is the length of the incomplete UTF-8 character at the
// end of p, if p ends in one.
func incompleteTail(p []byte) int {
	for i := 1; i < utf8.UTFMax && i <= len(p); i++ {
		b := p[len(p)-i]
		if utf8.RuneStart(b) {
			if b >= utf8.RuneSelf && !utf8.FullRune(p[len(p)-i:]) {
				return i
			}
			return 0
		}
	}
	return 0
}
