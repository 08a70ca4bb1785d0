// Command wc prints the number of lines, words and bytes of its standard
// input, formatted as GNU coreutils wc formats them when it reads a pipe
// with no file argument in a UTF-8 locale: each count right-aligned in a
// field of at least seven columns, the fields separated by one space, and a
// newline at the end ("      2       3      16\n").
//
// Words follow coreutils too: a word is a maximal run of printable
// characters that are neither white space nor a no-break space. Control
// characters and bytes that are not valid UTF-8 neither start nor end a
// word. Character classes are those of the GNU C library's C.UTF-8 locale
// (Unicode 14.0), rebuilt from Go's Unicode tables.
package main

import (
	"fmt"
	"io"
	"os"
	"unicode"
	"unicode/utf8"
)

// Character classes, as far as counting goes.
const (
	unknown   = iota // not yet classified (in the cache)
	inert            // unprintable: neither starts nor ends a word
	wordChar         // printable and not a space: part of a word
	separator        // white space or a no-break space: ends a word
	newline          // ends a word and a line
)

// asciiClass classifies the ASCII characters; bmpCache classifies the
// other characters of the Basic Multilingual Plane as they are first met.
var (
	asciiClass [utf8.RuneSelf]uint8
	bmpCache   [1 << 16]uint8
)

func init() {
	for b := range asciiClass {
		asciiClass[b] = classify(rune(b))
	}
}

// classOf classifies r.
func classOf(r rune) uint8 {
	if r >= 1<<16 {
		return classify(r)
	}
	c := bmpCache[r]
	if c == unknown {
		c = classify(r)
		bmpCache[r] = c
	}
	return c
}

// classify classifies r the way coreutils wc does: newline counts a line;
// the ASCII white space characters separate words; any other character
// separates words if it is printable white space, is part of a word if it
// is otherwise printable, and is inert if it is not printable.
func classify(r rune) uint8 {
	switch r {
	case '\n':
		return newline
	case '\t', '\v', '\f', '\r', ' ':
		return separator
	}
	switch {
	case !isPrint(r):
		return inert
	case isSpace(r) || isNoBreakSpace(r):
		return separator
	}
	return wordChar
}

// isPrint reports whether r is printable in the C library's sense: an
// assigned character that is not a control character or a line or
// paragraph separator.
func isPrint(r rune) bool {
	if unicode.Is(unicode.Cc, r) || r == '\u2028' || r == '\u2029' {
		return false
	}
	if unicode.Is(newInUnicode15, r) {
		return false
	}
	// Unassigned code points are not printable; Go has no table of
	// assigned code points, so test every general category.
	return unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S,
		unicode.Zs, unicode.Cf, unicode.Co)
}

// newInUnicode15 lists the characters Unicode 15.0 added. The C library
// coreutils is measured against (glibc 2.36, Unicode 14.0) has them
// unassigned, hence unprintable, while Go's tables know them.
var newInUnicode15 = &unicode.RangeTable{
	R16: []unicode.Range16{
		{0x0cf3, 0x0cf3, 1},
		{0x0ece, 0x0ece, 1},
	},
	R32: []unicode.Range32{
		{0x10efd, 0x10eff, 1},
		{0x1123f, 0x11241, 1},
		{0x11b00, 0x11b09, 1},
		{0x11f00, 0x11f10, 1},
		{0x11f12, 0x11f3a, 1},
		{0x11f3e, 0x11f59, 1},
		{0x1342f, 0x1342f, 1},
		{0x13439, 0x13455, 1},
		{0x1b132, 0x1b132, 1},
		{0x1b155, 0x1b155, 1},
		{0x1d2c0, 0x1d2d3, 1},
		{0x1df25, 0x1df2a, 1},
		{0x1e030, 0x1e06d, 1},
		{0x1e08f, 0x1e08f, 1},
		{0x1e4d0, 0x1e4f9, 1},
		{0x1f6dc, 0x1f6dc, 1},
		{0x1f774, 0x1f776, 1},
		{0x1f77b, 0x1f77f, 1},
		{0x1f7d9, 0x1f7d9, 1},
		{0x1fa75, 0x1fa77, 1},
		{0x1fa87, 0x1fa88, 1},
		{0x1faad, 0x1faaf, 1},
		{0x1fabb, 0x1fabd, 1},
		{0x1fabf, 0x1fabf, 1},
		{0x1face, 0x1facf, 1},
		{0x1fada, 0x1fadb, 1},
		{0x1fae8, 0x1fae8, 1},
		{0x1faf7, 0x1faf8, 1},
		{0x2b739, 0x2b739, 1},
		{0x31350, 0x323af, 1},
	},
}

// isSpace reports whether r is white space in the C library's sense: ASCII
// white space, and the Unicode space separators except the no-break ones.
func isSpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', ' ':
		return true
	case '\u00a0', '\u2007', '\u202f':
		return false
	}
	return unicode.In(r, unicode.Zs, unicode.Zl, unicode.Zp)
}

// isNoBreakSpace reports whether r is one of the no-break spaces that
// coreutils also treats as a word separator.
func isNoBreakSpace(r rune) bool {
	return r == '\u00a0' || r == '\u2007' || r == '\u202f' || r == '\u2060'
}

// count returns the number of lines, words and bytes of r.
func count(r io.Reader) (lines, words, bytes int64, err error) {
	inWord := false
	buf := make([]byte, 64<<10)
	carry := 0 // bytes of an incomplete character kept from the last read
	for {
		n, rerr := r.Read(buf[carry:])
		bytes += int64(n)
		data := buf[:carry+n]
		end := rerr != nil
		i := 0
		for i < len(data) {
			var class uint8
			if b := data[i]; b < utf8.RuneSelf {
				class = asciiClass[b]
				i++
			} else {
				if !end && !utf8.FullRune(data[i:]) {
					break // the rest of this character comes with the next read
				}
				ch, size := utf8.DecodeRune(data[i:])
				i += size
				if ch == utf8.RuneError && size == 1 {
					continue // an invalid byte counts as a byte only
				}
				class = classOf(ch)
			}
			switch class {
			case wordChar:
				inWord = true
			case separator, newline:
				if class == newline {
					lines++
				}
				if inWord {
					words++
					inWord = false
				}
			}
		}
		carry = copy(buf, data[i:])
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return lines, words, bytes, rerr
		}
	}
	if inWord {
		words++
	}
	return lines, words, bytes, nil
}

func main() {
	lines, words, bytes, err := count(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wc: reading standard input:", err)
		os.Exit(1)
	}
	fmt.Printf("%7d %7d %7d\n", lines, words, bytes)
}
