// A small WASI preview1 shim: enough of the system interface for a command
// module (such as a Go program built with GOOS=wasip1) that reads stdin and
// writes stdout and stderr. There is no file system, no network and no
// environment beyond what the caller passes in.
//
//   const wasi = new WASI({args: ["upper"], stdin: bytes});
//   const instance = await WebAssembly.instantiate(module, wasi.imports);
//   const {exitCode, stdout, stderr} = wasi.start(instance);

// Error numbers (WASI errno).
const ESUCCESS = 0;
const EBADF = 8;
const EFBIG = 22;
const EINVAL = 28;
const ENOSYS = 52;
const ESPIPE = 70;

const CHARACTER_DEVICE = 2; // filetype of fds 0-2
const CLOCK_REALTIME = 0;
const CLOCK_MONOTONIC = 1;
const EVENT_CLOCK = 0;
const SUBSCRIPTION_CLOCK_ABSTIME = 1;

// Each of stdout and stderr keeps at most this much, as the tiers do.
const MAX_OUTPUT = 16 << 20;

// Exit is thrown by proc_exit to unwind the module.
class Exit {
  constructor(code) {
    this.code = code;
  }
}

const encoder = new TextEncoder();

// Clocks in nanoseconds, as BigInt.
const monotonicNs = () => BigInt(Math.round(performance.now() * 1e6));
const realtimeNs = () =>
  BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));

export class WASI {
  constructor({ args = [], env = {}, stdin = new Uint8Array() } = {}) {
    this.args = args.map((a) => encoder.encode(a + "\0"));
    this.env = Object.entries(env).map(([k, v]) => encoder.encode(`${k}=${v}\0`));
    this.stdin = stdin;
    this.stdinPos = 0;
    this.out = { 1: [], 2: [] }; // chunks written to stdout and stderr
    this.outSize = { 1: 0, 2: 0 };
    this.memory = null; // the instance's memory, set by start()

    const calls = this.calls();
    // Any import the shim does not implement answers ENOSYS, so that
    // instantiation never fails for a missing function.
    const missing = () => ENOSYS;
    const module = (known) =>
      new Proxy(known, { get: (t, name) => (Object.hasOwn(t, name) ? t[name] : missing) });
    this.imports = new Proxy(
      { wasi_snapshot_preview1: module(calls) },
      { get: (t, name) => t[name] ?? module({}) },
    );
  }

  // start runs the module's _start export and returns its exit code and
  // output. A normal return is exit code 0.
  start(instance) {
    this.memory = instance.exports.memory;
    let exitCode = 0;
    try {
      instance.exports._start();
    } catch (e) {
      if (!(e instanceof Exit)) throw e;
      exitCode = e.code;
    }
    return { exitCode, stdout: concat(this.out[1]), stderr: concat(this.out[2]) };
  }

  // Fresh views on every call: memory.grow detaches the old buffer.
  view() {
    return new DataView(this.memory.buffer);
  }
  bytes(ptr, len) {
    return new Uint8Array(this.memory.buffer, ptr, len);
  }

  // iovecs yields the buffers of an iovec array: {buf u32, buf_len u32}.
  *iovecs(ptr, count) {
    const v = this.view();
    for (let i = 0; i < count; i++) {
      yield this.bytes(v.getUint32(ptr + 8 * i, true), v.getUint32(ptr + 8 * i + 4, true));
    }
  }

  // strings writes NUL-terminated strings and an array of pointers to them
  // (for args_get and environ_get).
  strings(list, ptrs, buf) {
    const v = this.view();
    list.forEach((s, i) => {
      v.setUint32(ptrs + 4 * i, buf, true);
      this.bytes(buf, s.length).set(s);
      buf += s.length;
    });
    return ESUCCESS;
  }

  // sizes writes the count of strings and their total length.
  sizes(list, countPtr, sizePtr) {
    const v = this.view();
    v.setUint32(countPtr, list.length, true);
    v.setUint32(sizePtr, list.reduce((n, s) => n + s.length, 0), true);
    return ESUCCESS;
  }

  // calls are the implemented functions of wasi_snapshot_preview1.
  calls() {
    return {
      args_get: (ptrs, buf) => this.strings(this.args, ptrs, buf),
      args_sizes_get: (count, size) => this.sizes(this.args, count, size),
      environ_get: (ptrs, buf) => this.strings(this.env, ptrs, buf),
      environ_sizes_get: (count, size) => this.sizes(this.env, count, size),

      clock_time_get: (id, _precision, ptr) => {
        if (id !== CLOCK_REALTIME && id !== CLOCK_MONOTONIC) return EINVAL;
        this.view().setBigUint64(ptr, id === CLOCK_REALTIME ? realtimeNs() : monotonicNs(), true);
        return ESUCCESS;
      },
      clock_res_get: (id, ptr) => {
        if (id !== CLOCK_REALTIME && id !== CLOCK_MONOTONIC) return EINVAL;
        this.view().setBigUint64(ptr, 1000n, true); // 1 µs
        return ESUCCESS;
      },

      random_get: (ptr, len) => {
        // getRandomValues fills at most 65536 bytes a call.
        for (let off = 0; off < len; off += 65536) {
          crypto.getRandomValues(this.bytes(ptr + off, Math.min(65536, len - off)));
        }
        return ESUCCESS;
      },

      fd_write: (fd, iovs, count, nwrittenPtr) => {
        if (fd !== 1 && fd !== 2) return EBADF;
        let n = 0;
        for (const b of this.iovecs(iovs, count)) {
          if (this.outSize[fd] + b.length > MAX_OUTPUT) return EFBIG;
          this.out[fd].push(b.slice()); // copy: memory changes later
          this.outSize[fd] += b.length;
          n += b.length;
        }
        this.view().setUint32(nwrittenPtr, n, true);
        return ESUCCESS;
      },

      fd_read: (fd, iovs, count, nreadPtr) => {
        if (fd !== 0) return EBADF;
        let n = 0;
        for (const b of this.iovecs(iovs, count)) {
          const chunk = this.stdin.subarray(this.stdinPos, this.stdinPos + b.length);
          b.set(chunk);
          this.stdinPos += chunk.length;
          n += chunk.length;
          if (chunk.length < b.length) break; // end of input
        }
        this.view().setUint32(nreadPtr, n, true);
        return ESUCCESS;
      },

      fd_close: (fd) => (fd <= 2 ? ESUCCESS : EBADF),
      fd_fdstat_get: (fd, ptr) => {
        if (fd > 2) return EBADF;
        // fdstat: filetype u8, flags u16, rights_base u64, rights_inheriting u64.
        const v = this.view();
        v.setUint8(ptr, CHARACTER_DEVICE);
        v.setUint16(ptr + 2, 0, true);
        v.setBigUint64(ptr + 8, 0xffffffffffffffffn, true);
        v.setBigUint64(ptr + 16, 0xffffffffffffffffn, true);
        return ESUCCESS;
      },
      fd_fdstat_set_flags: () => ESUCCESS,
      fd_prestat_get: () => EBADF, // no preopened directories
      fd_prestat_dir_name: () => EBADF,
      fd_seek: (fd) => (fd <= 2 ? ESPIPE : EBADF),

      proc_exit: (code) => {
        throw new Exit(code);
      },
      sched_yield: () => ESUCCESS,
      poll_oneoff: (inPtr, outPtr, count, neventsPtr) =>
        this.poll(inPtr, outPtr, count, neventsPtr),
    };
  }

  // poll answers poll_oneoff. Reading stdin and writing output never
  // block, so a subscription to an fd is ready at once; otherwise it waits
  // for the earliest clock, busy-waiting (a worker cannot sleep without
  // shared memory).
  poll(inPtr, outPtr, count, neventsPtr) {
    if (count === 0) return EINVAL;
    const v = this.view();
    // A subscription is 48 bytes: userdata u64, tag u8 @8, then for a clock
    // id u32 @16, timeout u64 @24, precision u64 @32, flags u16 @40, and
    // for an fd the fd u32 @16.
    const subs = [];
    for (let i = 0; i < count; i++) {
      const s = inPtr + 48 * i;
      const sub = { userdata: v.getBigUint64(s, true), type: v.getUint8(s + 8) };
      if (sub.type === EVENT_CLOCK) {
        const timeout = Number(v.getBigUint64(s + 24, true)) / 1e6; // ms
        sub.at = performance.now() + timeout;
        if (v.getUint16(s + 40, true) & SUBSCRIPTION_CLOCK_ABSTIME) {
          const now = v.getUint32(s + 16, true) === CLOCK_REALTIME ? realtimeNs() : monotonicNs();
          sub.at -= Number(now) / 1e6;
        }
      } else {
        sub.fd = v.getUint32(s + 16, true);
      }
      subs.push(sub);
    }
    if (subs.every((s) => s.type === EVENT_CLOCK)) {
      const deadline = Math.min(...subs.map((s) => s.at));
      while (performance.now() < deadline) {
        // busy-wait
      }
    }
    // An event is 32 bytes: userdata u64, error u16 @8, type u8 @10,
    // nbytes u64 @16, flags u16 @24.
    const now = performance.now();
    let n = 0;
    for (const s of subs) {
      if (s.type === EVENT_CLOCK && s.at > now) continue;
      const e = outPtr + 32 * n++;
      this.bytes(e, 32).fill(0);
      v.setBigUint64(e, s.userdata, true);
      v.setUint8(e + 10, s.type);
      if (s.type !== EVENT_CLOCK) {
        const ready = s.fd === 0 ? this.stdin.length - this.stdinPos : 65536;
        v.setBigUint64(e + 16, BigInt(ready), true);
      }
    }
    v.setUint32(neventsPtr, n, true);
    return ESUCCESS;
  }
}

// concat joins chunks into one array.
function concat(chunks) {
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.length;
  }
  return all;
}
