"""ptxsim -- a small interpreter for the PTX subset used by ptx/quantize.ptx and ptx/lowrank.ptx.

Not a general PTX simulator: it parses and executes exactly the directives and instructions
those two kernels use (see README.md in this folder), and checks, while it runs:

  * out-of-bounds / misaligned global accesses (every allocation is a separate buffer placed
    at its own 4 GiB-aligned base, so an address can never wander into a neighbour);
  * out-of-bounds shared accesses (every .shared variable and the dynamic .extern array are
    separate regions), reads of never-written shared bytes, and shared-memory data races
    (two threads touching a byte in the same bar.sync epoch, at least one writing);
  * cp.async: the copied bytes land in shared memory only when a cp.async.wait_group of the
    issuing thread covers their group; reading or overwriting bytes with a copy in flight is
    reported;
  * warp-collective instructions (vote, shfl, ldmatrix, mma) must be reached by all 32 lanes
    of the warp at the same instruction; bar.sync by every live thread of the CTA;
  * reads of registers never written by that thread; division by zero.

Execution model: every thread is its own instruction stream.  For speed, threads that sit at
the same PC are executed together as one numpy-vectorised group; the scheduler always advances
the lowest runnable PC, so groups reconverge wherever their paths meet.  Threads that reach a
warp collective wait there until the whole warp has arrived (or report divergence if the warp
can never arrive); bar.sync waits for the whole CTA.  CTAs run one after another in a chosen
order (forward, reverse, shuffled).
"""

from __future__ import annotations

import re
import numpy as np

M32 = np.uint64(0xFFFFFFFF)
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
U64 = np.uint64

TYPE_BITS = {
    'pred': 1, 'b8': 8, 'u8': 8, 's8': 8, 'b16': 16, 'u16': 16, 's16': 16, 'f16': 16,
    'bf16': 16, 'b32': 32, 'u32': 32, 's32': 32, 'f32': 32, 'b64': 64, 'u64': 64, 's64': 64,
    'f64': 64,
}
SPECIAL = {'%tid.x', '%tid.y', '%tid.z', '%ntid.x', '%ctaid.x', '%ctaid.y', '%ctaid.z',
           '%nctaid.x', '%nctaid.y', '%nctaid.z', '%lanemask_lt', '%laneid'}


def wmask(bits):
    return U64((1 << bits) - 1) if bits < 64 else M64


# ----------------------------------------------------------------------------- errors

class SimError(Exception):
    """A fatal problem (deadlock, divergence at a collective, unsupported instruction)."""


class Report:
    """Collects findings; each (kind, line) is recorded once with a count of repeats."""

    def __init__(self, limit_per_key=3):
        self.items = []
        self.counts = {}
        self.limit = limit_per_key

    def add(self, kind, msg, ins=None, cta=None, fatal=False):
        line = ins.line if ins is not None else None
        key = (kind, line)
        n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        if n < self.limit:
            self.items.append({
                'kind': kind, 'line': line, 'pc': getattr(ins, 'pc', None),
                'text': ins.text if ins is not None else '',
                'cta': cta, 'msg': msg, 'fatal': fatal,
            })

    def __bool__(self):
        return bool(self.items)

    def format(self):
        out = []
        for it in self.items:
            where = (f"line {it['line']} (pc {it['pc']})" if it['line'] is not None else '-')
            n = self.counts[(it['kind'], it['line'])]
            rep = f" (x{n} in total)" if n > self.limit else ''
            out.append(f"[{it['kind']}] {where} cta={it['cta']}: {it['msg']}{rep}\n"
                       f"      {it['text']}")
        return '\n'.join(out)


# ----------------------------------------------------------------------------- parsing

class Operand:
    __slots__ = ('kind', 'name', 'value', 'items', 'base', 'offset')

    def __init__(self, kind, name=None, value=None, items=None, base=None, offset=0):
        self.kind, self.name, self.value = kind, name, value
        self.items, self.base, self.offset = items, base, offset

    def __repr__(self):
        return f"Operand({self.kind},{self.name},{self.value},{self.items},{self.base},{self.offset})"


class Instr:
    __slots__ = ('op', 'mods', 'full', 'guard', 'ops', 'line', 'text', 'kind', 'fn', 'target',
                 'srcregs', 'srcpreds', 'pc')

    def __init__(self, full, guard, ops, line, text):
        parts = full.split('.')
        self.op, self.mods, self.full = parts[0], parts[1:], full
        self.guard, self.ops, self.line, self.text = guard, ops, line, text
        self.kind = 'normal'
        self.fn = None
        self.target = None
        self.srcregs = ()
        self.srcpreds = ()


class Kernel:
    def __init__(self, name):
        self.name = name
        self.params = []          # (name, type)
        self.shared = []          # (name, align, nbytes)
        self.extern_shared = []   # (name, align)
        self.regs = {}            # name -> type
        self.instrs = []
        self.labels = {}


def _split_operands(s):
    out, depth, cur = [], 0, ''
    for ch in s:
        if ch in '[{':
            depth += 1
        elif ch in ']}':
            depth -= 1
        if ch == ',' and depth == 0:
            out.append(cur.strip())
            cur = ''
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _parse_int(tok):
    tok = tok.strip()
    neg = tok.startswith('-')
    if neg:
        tok = tok[1:]
    if tok.lower().startswith('0x'):
        v = int(tok, 16)
    else:
        v = int(tok, 10)
    return -v if neg else v


def parse_operand(s):
    s = s.strip()
    if s.startswith('{'):
        return Operand('vec', items=[parse_operand(x) for x in _split_operands(s[1:-1])])
    if s.startswith('['):
        inner = s[1:-1].strip()
        m = re.match(r'^([%\w$.]+)\s*(?:\+\s*(-?\s*\w+))?$', inner)
        if not m:
            raise SimError(f"cannot parse address operand {s!r}")
        base = parse_operand(m.group(1))
        off = _parse_int(m.group(2).replace(' ', '')) if m.group(2) else 0
        return Operand('mem', base=base, offset=off)
    if s in SPECIAL:
        return Operand('special', name=s)
    if s.startswith('%'):
        return Operand('reg', name=s)
    if re.match(r'^0[fF][0-9a-fA-F]{8}$', s):
        return Operand('fimm', value=int(s[2:], 16), name='f32')
    if re.match(r'^0[dD][0-9a-fA-F]{16}$', s):
        return Operand('fimm', value=int(s[2:], 16), name='f64')
    if re.match(r'^-?(0[xX][0-9a-fA-F]+|\d+)$', s):
        return Operand('imm', value=_parse_int(s))
    if re.match(r'^[A-Za-z_$][\w$]*$', s):
        return Operand('sym', name=s)
    raise SimError(f"cannot parse operand {s!r}")


def _expand_reg_names(spec):
    """'%r<64>' -> %r0..%r63; '%thr' -> %thr."""
    m = re.match(r'^(%[\w$]+)<(\d+)>$', spec)
    if m:
        return [f"{m.group(1)}{i}" for i in range(int(m.group(2)))]
    return [spec]


def parse_module(text):
    """Returns {name: Kernel} for every .entry in the module."""
    lines = text.split('\n')
    clean = [re.sub(r'//.*', '', ln) for ln in lines]
    kernels = {}
    module_extern = []
    i = 0
    n = len(clean)
    while i < n:
        ln = clean[i].strip()
        if ln.startswith('.extern') and '.shared' in ln:
            m = re.match(r'^\.extern\s+\.shared\s+\.align\s+(\d+)\s+\.\w+\s+(\w+)\s*\[\s*\]\s*;', ln)
            if not m:
                raise SimError(f"line {i+1}: cannot parse {ln!r}")
            module_extern.append((m.group(2), int(m.group(1))))
            i += 1
            continue
        m = re.match(r'^\.visible\s+\.entry\s+(\w+)\s*\(', ln)
        if m:
            k = Kernel(m.group(1))
            k.extern_shared = list(module_extern)
            # parameters until ')'
            i += 1
            while not clean[i].strip().startswith(')'):
                p = clean[i].strip().rstrip(',')
                if p:
                    pm = re.match(r'^\.param\s+\.(\w+)\s+(\w+)$', p)
                    if not pm:
                        raise SimError(f"line {i+1}: cannot parse param {p!r}")
                    k.params.append((pm.group(2), pm.group(1)))
                i += 1
            # skip to '{'
            while clean[i].strip() != '{':
                i += 1
            i += 1
            depth = 1
            while i < n:
                raw = clean[i].strip()
                lineno = i + 1
                i += 1
                if raw == '}':
                    depth -= 1
                    if depth == 0:
                        break
                    continue
                if not raw:
                    continue
                lm = re.match(r'^([A-Za-z_$][\w$]*):\s*(.*)$', raw)
                if lm:
                    k.labels[lm.group(1)] = len(k.instrs)
                    raw = lm.group(2).strip()
                    if not raw:
                        continue
                for stmt in raw.split(';'):
                    stmt = stmt.strip()
                    if not stmt:
                        continue
                    _parse_statement(k, stmt, lineno, lines[lineno - 1].strip())
            # resolve branch targets
            for ins in k.instrs:
                if ins.op == 'bra':
                    tgt = ins.ops[0].name
                    if tgt not in k.labels:
                        raise SimError(f"line {ins.line}: unknown label {tgt}")
                    ins.target = k.labels[tgt]
            kernels[k.name] = k
            continue
        i += 1
    return kernels


def _parse_statement(k, stmt, lineno, text):
    if stmt.startswith('.reg'):
        m = re.match(r'^\.reg\s+\.(\w+)\s+(.*)$', stmt)
        typ = m.group(1)
        for spec in _split_operands(m.group(2)):
            for name in _expand_reg_names(spec.strip()):
                k.regs[name] = typ
        return
    if stmt.startswith('.shared'):
        m = re.match(r'^\.shared\s+\.align\s+(\d+)\s+\.(\w+)\s+(\w+)\s*(?:\[\s*(\d+)\s*\])?$', stmt)
        if not m:
            raise SimError(f"line {lineno}: cannot parse {stmt!r}")
        align, typ, name, cnt = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        nbytes = TYPE_BITS[typ] // 8 * (int(cnt) if cnt else 1)
        k.shared.append((name, align, nbytes))
        return
    if stmt.startswith('.'):
        return  # other directives (.maxntid etc.)
    guard = None
    gm = re.match(r'^@(!?)(%[\w$]+)\s+(.*)$', stmt)
    if gm:
        guard = (gm.group(2), gm.group(1) == '!')
        stmt = gm.group(3).strip()
    parts = stmt.split(None, 1)
    full = parts[0]
    ops = [parse_operand(o) for o in _split_operands(parts[1])] if len(parts) > 1 else []
    k.instrs.append(Instr(full, guard, ops, lineno, text))


# ----------------------------------------------------------------------------- memories

class GlobalMemory:
    """Every allocation is a separate byte buffer at base (index+1) << 32."""

    def __init__(self):
        self.allocs = []

    def alloc(self, name, nbytes=None, data=None, init=True, fill=None):
        if data is not None:
            buf = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8).copy()
        else:
            buf = np.zeros(nbytes, dtype=np.uint8)
            if fill is not None:
                buf[:] = fill
        a = {'name': name, 'data': buf, 'init': np.full(buf.size, bool(init))}
        self.allocs.append(a)
        return (len(self.allocs)) << 32

    def begin_launch(self):
        """Cross-CTA race tracking restarts at every launch (launches are ordered)."""
        for a in self.allocs:
            n = a['data'].size
            a['w_cta'] = np.full(n, -1, dtype=np.int64)   # CTA that plainly stored the byte
            a['r_cta'] = np.full(n, -1, dtype=np.int64)   # CTA that plainly loaded it, -2 several
            a['at_cta'] = np.full(n, -1, dtype=np.int64)  # CTA that updated it atomically, -2 several

    def _xcta(self, a, pos, ctx, ins, what, mode):
        """mode: 'ld' plain load, 'ldstrong' relaxed/atomic-ordered load, 'st', 'atom'."""
        if 'w_cta' not in a:
            return
        cur = ctx.cta_index
        w, r, at = a['w_cta'][pos], a['r_cta'][pos], a['at_cta'][pos]
        other_w = (w >= 0) & (w != cur)
        msg = None
        if other_w.any():
            msg = (f"{what} touches bytes of {a['name']} stored by another CTA "
                   f"{int(w[other_w][0])} in the same launch")
        elif mode == 'ld' and ((at != -1) & (at != cur)).any():
            msg = f"plain {what} of {a['name']} bytes updated atomically by another CTA"
        elif mode == 'st' and ((r != -1) & (r != cur)).any():
            msg = f"{what} overwrites {a['name']} bytes another CTA loaded in this launch"
        elif mode == 'st' and ((at != -1) & (at != cur)).any():
            msg = f"plain {what} to {a['name']} bytes updated atomically by another CTA"
        if msg:
            ctx.report.add('global-cross-cta-race', msg + ' (result depends on CTA order)',
                           ins, ctx.cta_id)
        if mode in ('ld', 'ldstrong'):
            rr = a['r_cta'][pos]
            a['r_cta'][pos] = np.where((rr == -1) | (rr == cur), cur, -2)
        elif mode == 'st':
            a['w_cta'][pos] = cur
        else:
            aa = a['at_cta'][pos]
            a['at_cta'][pos] = np.where((aa == -1) | (aa == cur), cur, -2)

    def find(self, addr):
        return self.allocs[(addr >> 32) - 1]

    def view(self, addr, dtype, count=None):
        a = self.find(addr)
        off = addr & 0xFFFFFFFF
        b = a['data'][off:]
        if count is not None:
            b = b[:count * np.dtype(dtype).itemsize]
        return b.view(dtype)

    def _locate(self, addrs, size, ctx, ins, what, check_align=True):
        """-> (alloc index array, offsets, ok mask) for uint64 addrs."""
        idx = (addrs >> U64(32)).astype(np.int64) - 1
        off = (addrs & M32).astype(np.int64)
        ok = (idx >= 0) & (idx < len(self.allocs))
        lens = np.array([a['data'].size for a in self.allocs] + [0], dtype=np.int64)
        ln = lens[np.where(ok, idx, len(self.allocs))]
        inb = ok & (off + size <= ln)
        if not inb.all():
            bad = np.nonzero(~inb)[0]
            j = bad[0]
            aname = self.allocs[idx[j]]['name'] if ok[j] else '<no allocation>'
            ctx.report.add('global-oob', f"{what} of {size} bytes at {int(addrs[j]):#x} "
                           f"({aname} + {int(off[j])}, buffer {int(ln[j])} bytes) by thread "
                           f"{int(ctx.tid_of[j])}; {len(bad)} lane(s)", ins, ctx.cta_id)
        if check_align and size > 1:
            mis = inb & (off % size != 0)
            if mis.any():
                j = np.nonzero(mis)[0][0]
                ctx.report.add('global-misaligned', f"{what} of {size} bytes at "
                               f"{int(addrs[j]):#x}", ins, ctx.cta_id)
        return idx, off, inb

    def read(self, addrs, size, ctx, ins, what='load', check_init=True, check_align=True,
             mode='ld'):
        idx, off, ok = self._locate(addrs, size, ctx, ins, what, check_align)
        out = np.zeros((addrs.size, size), dtype=np.uint8)
        for ai in np.unique(idx[ok]):
            sel = ok & (idx == ai)
            a = self.allocs[ai]
            pos = off[sel][:, None] + np.arange(size)
            out[sel] = a['data'][pos]
            if mode is not None:
                self._xcta(a, pos, ctx, ins, what, mode)
            if check_init:
                ini = a['init'][pos]
                if not ini.all():
                    r, c = np.nonzero(~ini)
                    ctx.report.add('global-uninit', f"{what} reads uninitialised bytes of "
                                   f"{a['name']} at offset {int(pos[r[0], c[0]])}", ins,
                                   ctx.cta_id)
        return out

    def write(self, addrs, data, ctx, ins, what='store', mode='st'):
        size = data.shape[1]
        idx, off, ok = self._locate(addrs, size, ctx, ins, what)
        for ai in np.unique(idx[ok]):
            sel = ok & (idx == ai)
            a = self.allocs[ai]
            pos = off[sel][:, None] + np.arange(size)
            flat = pos.reshape(-1)
            if np.unique(flat).size != flat.size:
                ctx.report.add('global-store-conflict', f"{what}: several lanes store to the "
                               f"same bytes of {a['name']}", ins, ctx.cta_id)
            if mode is not None:
                self._xcta(a, pos, ctx, ins, what, mode)
            a['data'][pos] = data[sel]
            a['init'][pos] = True
        return ok


class SharedMemory:
    BASE = 0x100  # shared window offset of the first variable (0 stays invalid)

    def __init__(self, kernel, dyn_bytes):
        regions = []
        addr = self.BASE
        self.sym = {}
        for name, align, nbytes in kernel.shared:
            addr = (addr + align - 1) // align * align
            regions.append((addr, addr + nbytes, name))
            self.sym[name] = addr
            addr += nbytes
        for name, align in kernel.extern_shared:
            addr = (addr + align - 1) // align * align
            regions.append((addr, addr + dyn_bytes, name))
            self.sym[name] = addr
            addr += dyn_bytes
        self.size = addr
        self.regions = regions
        self.starts = np.array([r[0] for r in regions], dtype=np.int64)
        self.ends = np.array([r[1] for r in regions], dtype=np.int64)
        self.reset()

    def reset(self):
        n = self.size
        self.data = np.zeros(n, dtype=np.uint8)
        self.init = np.zeros(n, dtype=bool)
        self.pending = np.zeros(n, dtype=np.int32)
        self.w_epoch = np.full(n, -1, dtype=np.int64)
        self.w_tid = np.full(n, -1, dtype=np.int64)
        self.r_epoch = np.full(n, -1, dtype=np.int64)
        self.r_tid = np.full(n, -1, dtype=np.int64)

    def locate(self, addrs, size, ctx, ins, what, tids):
        a = addrs.astype(np.int64)
        k = np.searchsorted(self.starts, a, side='right') - 1
        ok = (k >= 0) & (a + size <= self.ends[np.maximum(k, 0)])
        if not ok.all():
            j = np.nonzero(~ok)[0][0]
            reg = self.regions[k[j]][2] if k[j] >= 0 else '<before first variable>'
            ctx.report.add('shared-oob', f"{what} of {size} bytes at shared {int(a[j]):#x} "
                           f"(region {reg}) by thread {int(tids[j])}", ins, ctx.cta_id)
        if size > 1:
            mis = ok & (a % min(size, 16) != 0)
            if mis.any():
                j = np.nonzero(mis)[0][0]
                ctx.report.add('shared-misaligned', f"{what} of {size} bytes at {int(a[j]):#x}",
                               ins, ctx.cta_id)
        return a, ok

    def check_read(self, pos, tids, ctx, ins, what):
        """pos: (n, size) byte positions, tids: (n,) reading threads."""
        e = ctx.epoch
        t = np.broadcast_to(tids[:, None], pos.shape)
        if not self.init[pos].all():
            r, c = np.nonzero(~self.init[pos])
            ctx.report.add('shared-uninit', f"{what} reads never-written shared byte "
                           f"{int(pos[r[0], c[0]]):#x} (thread {int(tids[r[0]])})", ins, ctx.cta_id)
        if (self.pending[pos] > 0).any():
            r, c = np.nonzero(self.pending[pos] > 0)
            ctx.report.add('cp.async-inflight-read', f"{what} reads shared byte "
                           f"{int(pos[r[0], c[0]]):#x} while a cp.async into it has not been "
                           f"waited for (thread {int(tids[r[0]])})", ins, ctx.cta_id)
        race = (self.w_epoch[pos] == e) & (self.w_tid[pos] != t)
        if race.any():
            r, c = np.nonzero(race)
            b = pos[r[0], c[0]]
            ctx.report.add('shared-race', f"{what} by thread {int(tids[r[0]])} reads byte "
                           f"{int(b):#x} written by thread {int(self.w_tid[b])} with no "
                           f"bar.sync in between (read-after-write)", ins, ctx.cta_id)
        fp, ft = pos.reshape(-1), t.reshape(-1)
        cur = self.r_epoch[fp] == e
        other = cur & (self.r_tid[fp] != ft)
        self.r_tid[fp[other]] = -2
        fresh = ~cur
        self.r_epoch[fp[fresh]] = e
        self.r_tid[fp[fresh]] = ft[fresh]
        # several distinct threads reading one byte within this instruction
        if fp.size > 1:
            order = np.argsort(fp, kind='stable')
            sp, st = fp[order], ft[order]
            dup = (sp[1:] == sp[:-1]) & (st[1:] != st[:-1])
            if dup.any():
                self.r_tid[sp[1:][dup]] = -2

    def check_write(self, pos, tids, ctx, ins, what, ignore_pending=False):
        e = ctx.epoch
        t = np.broadcast_to(tids[:, None], pos.shape)
        if not ignore_pending and (self.pending[pos] > 0).any():
            r, c = np.nonzero(self.pending[pos] > 0)
            ctx.report.add('cp.async-inflight-write', f"{what} writes shared byte "
                           f"{int(pos[r[0], c[0]]):#x} while a cp.async into it is in flight",
                           ins, ctx.cta_id)
        rr = (self.r_epoch[pos] == e) & (self.r_tid[pos] != t)
        if rr.any():
            r, c = np.nonzero(rr)
            b = pos[r[0], c[0]]
            who = int(self.r_tid[b])
            ctx.report.add('shared-race', f"{what} by thread {int(tids[r[0]])} writes byte "
                           f"{int(b):#x} read by thread {'several' if who == -2 else who} with "
                           f"no bar.sync in between (write-after-read)", ins, ctx.cta_id)
        ww = (self.w_epoch[pos] == e) & (self.w_tid[pos] != t)
        if ww.any():
            r, c = np.nonzero(ww)
            b = pos[r[0], c[0]]
            ctx.report.add('shared-race', f"{what} by thread {int(tids[r[0]])} writes byte "
                           f"{int(b):#x} written by thread {int(self.w_tid[b])} in the same "
                           f"epoch (write-after-write)", ins, ctx.cta_id)
        fp, ft = pos.reshape(-1), t.reshape(-1)
        if fp.size > 1:
            order = np.argsort(fp, kind='stable')
            sp, st = fp[order], ft[order]
            dup = (sp[1:] == sp[:-1]) & (st[1:] != st[:-1])
            if dup.any():
                ctx.report.add('shared-race', f"{what}: several threads write shared byte "
                               f"{int(sp[1:][dup][0]):#x} in one instruction", ins, ctx.cta_id)
        self.w_epoch[fp] = e
        self.w_tid[fp] = ft


# ----------------------------------------------------------------------------- contexts

class Ctx:
    pass


def _f32(x):
    return (x & M32).astype(np.uint32).view(np.float32)


def _from_f32(f):
    return np.asarray(f, dtype=np.float32).view(np.uint32).astype(np.uint64)


def _f64(x):
    return np.asarray(x, dtype=np.uint64).view(np.float64)


def _from_f64(f):
    return np.asarray(f, dtype=np.float64).view(np.uint64)


def _sext(x, bits):
    """uint64 bits -> int64 sign-extended from `bits`."""
    if bits == 64:
        return x.view(np.int64)
    v = (x & wmask(bits)).astype(np.int64)
    sign = np.int64(1 << (bits - 1))
    return (v ^ sign) - sign


def _bf16_rne(f32bits):
    """f32 bit patterns (uint64) -> bf16 bit patterns, round to nearest even, NaN canonical."""
    b = f32bits & M32
    nan = ((b & U64(0x7F800000)) == U64(0x7F800000)) & ((b & U64(0x007FFFFF)) != U64(0))
    lsb = (b >> U64(16)) & U64(1)
    r = ((b + U64(0x7FFF) + lsb) >> U64(16)) & U64(0xFFFF)
    return np.where(nan, U64(0x7FFF), r)


# ----------------------------------------------------------------------------- compile

def compile_kernel(k):
    for pc, ins in enumerate(k.instrs):
        ins.pc = pc
        _compile(k, pc, ins)
    return k


def _regtype(k, name, ins):
    if name not in k.regs:
        raise SimError(f"line {ins.line}: undeclared register {name}")
    return k.regs[name]


def _compile(k, pc, ins):
    op, mods = ins.op, ins.mods
    srcregs, srcpreds = [], []

    def reader(o):
        """-> function(ctx) returning uint64 array (N,) or scalar uint64 raw bits."""
        if o.kind == 'reg':
            t = _regtype(k, o.name, ins)
            if t == 'pred':
                srcpreds.append(o.name)
                return lambda ctx, n=o.name: ctx.P[n]
            srcregs.append(o.name)
            return lambda ctx, n=o.name: ctx.R[n]
        if o.kind == 'imm':
            v = U64(o.value & 0xFFFFFFFFFFFFFFFF)
            return lambda ctx: v
        if o.kind == 'fimm':
            v = U64(o.value)
            return lambda ctx: v
        if o.kind == 'special':
            nm = o.name
            if nm == '%tid.x':
                return lambda ctx: ctx.tid
            if nm == '%laneid':
                return lambda ctx: ctx.lane
            if nm == '%lanemask_lt':
                return lambda ctx: (U64(1) << ctx.lane) - U64(1)
            if nm.startswith('%ctaid.'):
                ax = 'xyz'.index(nm[-1])
                return lambda ctx: U64(ctx.ctaid[ax])
            if nm.startswith('%nctaid.'):
                ax = 'xyz'.index(nm[-1])
                return lambda ctx: U64(ctx.nctaid[ax])
            if nm == '%ntid.x':
                return lambda ctx: U64(ctx.N)
            raise SimError(f"line {ins.line}: special register {nm}")
        if o.kind == 'sym':
            nm = o.name
            return lambda ctx: U64(ctx.smem.sym[nm])
        raise SimError(f"line {ins.line}: bad source operand {o}")

    def writer(o):
        if o.kind != 'reg':
            raise SimError(f"line {ins.line}: destination must be a register")
        t = _regtype(k, o.name, ins)
        name = o.name
        if t == 'pred':
            def wp(ctx, val, mask):
                np.copyto(ctx.P[name], val, where=mask)
                _define(ctx, name, mask)
            return wp
        wm = wmask(TYPE_BITS[t])

        def w(ctx, val, mask):
            v = np.asarray(val, dtype=np.uint64) & wm
            np.copyto(ctx.R[name], v, where=mask)
            _define(ctx, name, mask)
        return w

    def addr_reader(o):
        if o.kind != 'mem':
            raise SimError(f"line {ins.line}: expected an address")
        if o.base.kind == 'sym':
            nm, off = o.base.name, o.offset
            return ('sym', nm, off)
        r = reader(o.base)
        off = U64(o.offset & 0xFFFFFFFFFFFFFFFF)
        return ('reg', lambda ctx: (r(ctx) + off), None)

    full = ins.full
    typ = mods[-1] if mods else None
    fn = None

    # ---------------- control
    if op == 'bra':
        ins.kind = 'bra'
        ins.fn = None
    elif op == 'ret':
        ins.kind = 'ret'
    elif op == 'bar':
        ins.kind = 'bar'
        if ins.ops[0].kind != 'imm' or ins.ops[0].value != 0 or len(ins.ops) != 1:
            raise SimError(f"line {ins.line}: only bar.sync 0 is modelled")
    elif op == 'fence':
        def fn(ctx, mask):
            pass
    # ---------------- moves / params
    elif op == 'mov' and ins.ops[0].kind == 'vec':
        # mov.b32 {lo, hi}, r: unpack, the first register receiving the low half
        src = reader(ins.ops[1])
        parts = [writer(d) for d in ins.ops[0].items]
        pbits = TYPE_BITS[typ] // len(parts)
        pm = U64((1 << pbits) - 1)

        def fn(ctx, mask):
            v = _full(ctx, src(ctx))
            for i, wp in enumerate(parts):
                wp(ctx, (v >> U64(i * pbits)) & pm, mask)
    elif op == 'mov':
        src = reader(ins.ops[1])
        w = writer(ins.ops[0])
        if ins.ops[1].kind == 'imm' and typ in ('f32', 'f64'):
            raise SimError(f"line {ins.line}: integer immediate for float mov")

        def fn(ctx, mask):
            w(ctx, src(ctx), mask)
    elif op == 'ld' and 'param' in mods:
        pname = ins.ops[1].base.name
        w = writer(ins.ops[0])

        def fn(ctx, mask):
            w(ctx, U64(ctx.params[pname] & 0xFFFFFFFFFFFFFFFF), mask)
    elif op == 'cvta':
        src = reader(ins.ops[1])
        w = writer(ins.ops[0])

        def fn(ctx, mask):
            w(ctx, src(ctx), mask)
    # ---------------- integer arithmetic
    elif op in ('add', 'sub', 'mul', 'mad', 'div', 'rem', 'min', 'max', 'abs', 'neg', 'and',
                'or', 'xor', 'shl', 'shr', 'popc') and typ not in ('f32', 'f64', 'pred'):
        fn = _compile_int(ins, reader, writer, typ)
    elif op == 'not' and typ == 'pred':
        a = reader(ins.ops[1])
        w = writer(ins.ops[0])

        def fn(ctx, mask):
            w(ctx, np.logical_not(a(ctx)), mask)
    elif op == 'bfi' and typ == 'b32':
        # bfi.b32 d, a, b, pos, len: b with bits [pos, pos+len) replaced by a's low len bits
        a, b, c, d = (reader(o) for o in ins.ops[1:5])
        w = writer(ins.ops[0])

        def fn(ctx, mask):
            pos = _full(ctx, c(ctx)) & U64(0xFF)
            ln = _full(ctx, d(ctx)) & U64(0xFF)
            fm = ((U64(1) << ln) - U64(1)) << pos
            r = (_full(ctx, b(ctx)) & ~fm) | ((_full(ctx, a(ctx)) << pos) & fm)
            w(ctx, r & U64(0xFFFFFFFF), mask)
    elif op in ('and', 'or') and typ == 'pred':
        a, b = reader(ins.ops[1]), reader(ins.ops[2])
        w = writer(ins.ops[0])
        if op == 'and':
            def fn(ctx, mask):
                w(ctx, a(ctx) & b(ctx), mask)
        else:
            def fn(ctx, mask):
                w(ctx, a(ctx) | b(ctx), mask)
    # ---------------- float arithmetic
    elif op in ('add', 'mul', 'div', 'max', 'abs', 'sub') and typ in ('f32', 'f64'):
        fn = _compile_float(ins, reader, writer, typ)
    elif op == 'testp':
        a = reader(ins.ops[1])
        w = writer(ins.ops[0])
        if mods != ['infinite', 'f32']:
            raise SimError(f"line {ins.line}: unsupported {full}")

        def fn(ctx, mask):
            w(ctx, np.isinf(_f32(np.asarray(a(ctx), dtype=np.uint64) + np.zeros(ctx.N, np.uint64))), mask)
    elif op == 'setp':
        fn = _compile_setp(ins, reader, writer)
    elif op == 'selp':
        a, b, p = reader(ins.ops[1]), reader(ins.ops[2]), reader(ins.ops[3])
        w = writer(ins.ops[0])

        def fn(ctx, mask):
            w(ctx, np.where(p(ctx), a(ctx), b(ctx)), mask)
    elif op == 'cvt':
        fn = _compile_cvt(ins, reader, writer)
    # ---------------- memory
    elif op in ('ld', 'st'):
        fn = _compile_ldst(ins, reader, writer, addr_reader)
    elif op in ('red', 'atom'):
        fn = _compile_atomic(ins, reader, writer, addr_reader)
    elif op == 'cp':
        fn = _compile_cp(ins, reader, writer, addr_reader)
        if mods and mods[0] == 'async' and len(mods) >= 2 and mods[1] == 'wait_group':
            ins.kind = 'normal'
    # ---------------- warp collectives
    elif op in ('vote', 'shfl', 'ldmatrix', 'mma'):
        ins.kind = 'warp'
        fn = _compile_warp(ins, reader, writer, addr_reader, op)
    else:
        raise SimError(f"line {ins.line}: unsupported instruction {full}")
    if ins.guard is not None:
        srcpreds.append(ins.guard[0])
    ins.fn = fn
    ins.srcregs = tuple(dict.fromkeys(srcregs))
    ins.srcpreds = tuple(dict.fromkeys(srcpreds))


def _define(ctx, name, mask):
    if not ctx.Dfull.get(name, False):
        d = ctx.D[name]
        d |= mask
        if d.all():
            ctx.Dfull[name] = True


def _full(ctx, v):
    return np.asarray(v, dtype=np.uint64) + np.zeros(ctx.N, dtype=np.uint64)


def _compile_int(ins, reader, writer, typ):
    op, mods = ins.op, ins.mods
    bits = TYPE_BITS[typ]
    signed = typ.startswith('s')
    wm = wmask(bits)
    w = writer(ins.ops[0])
    srcs = [reader(o) for o in ins.ops[1:]]
    if op == 'mul' and 'wide' in mods:
        if typ != 'u32':
            raise SimError(f"line {ins.line}: unsupported {ins.full}")
        a, b = srcs

        def fn(ctx, mask):
            w(ctx, (a(ctx) & M32) * (b(ctx) & M32), mask)
        return fn
    if op == 'mul' and 'hi' in mods:
        if typ != 'u64':
            raise SimError(f"line {ins.line}: unsupported {ins.full}")
        a, b = srcs

        def fn(ctx, mask):
            x, y = _full(ctx, a(ctx)), _full(ctx, b(ctx))
            xl, xh, yl, yh = x & M32, x >> U64(32), y & M32, y >> U64(32)
            ll, lh, hl, hh = xl * yl, xl * yh, xh * yl, xh * yh
            mid = (ll >> U64(32)) + (lh & M32) + (hl & M32)
            w(ctx, hh + (lh >> U64(32)) + (hl >> U64(32)) + (mid >> U64(32)), mask)
        return fn
    if op == 'mul':  # mul.lo
        a, b = srcs

        def fn(ctx, mask):
            w(ctx, (a(ctx) * b(ctx)) & wm, mask)
        return fn
    if op == 'mad':
        if 'lo' not in mods:
            raise SimError(f"line {ins.line}: unsupported {ins.full}")
        a, b, c = srcs

        def fn(ctx, mask):
            w(ctx, (a(ctx) * b(ctx) + c(ctx)) & wm, mask)
        return fn
    if op in ('add', 'sub'):
        a, b = srcs
        if op == 'add':
            def fn(ctx, mask):
                w(ctx, (a(ctx) + b(ctx)) & wm, mask)
        else:
            def fn(ctx, mask):
                w(ctx, (a(ctx) - b(ctx)) & wm, mask)
        return fn
    if op in ('div', 'rem'):
        if signed:
            raise SimError(f"line {ins.line}: signed division not modelled")
        a, b = srcs

        def fn(ctx, mask):
            x, y = _full(ctx, a(ctx)) & wm, _full(ctx, b(ctx)) & wm
            z = mask & (y == 0)
            if z.any():
                ctx.report.add('div-by-zero', f"{ins.full} by zero in thread "
                               f"{int(np.nonzero(z)[0][0])}", ins, ctx.cta_id)
            ys = np.where(y == 0, U64(1), y)
            w(ctx, (x // ys) if op == 'div' else (x % ys), mask)
        return fn
    if op in ('min', 'max'):
        a, b = srcs
        f = np.minimum if op == 'min' else np.maximum
        if signed:
            def fn(ctx, mask):
                x, y = _sext(_full(ctx, a(ctx)), bits), _sext(_full(ctx, b(ctx)), bits)
                w(ctx, f(x, y).view(np.uint64), mask)
        else:
            def fn(ctx, mask):
                w(ctx, f(a(ctx) & wm, b(ctx) & wm), mask)
        return fn
    if op in ('abs', 'neg'):
        (a,) = srcs
        if op == 'abs':
            def fn(ctx, mask):
                w(ctx, np.abs(_sext(_full(ctx, a(ctx)), bits)).view(np.uint64), mask)
        else:
            def fn(ctx, mask):
                w(ctx, (U64(0) - _full(ctx, a(ctx))) & wm, mask)
        return fn
    if op in ('and', 'or', 'xor'):
        a, b = srcs
        f = {'and': np.bitwise_and, 'or': np.bitwise_or, 'xor': np.bitwise_xor}[op]

        def fn(ctx, mask):
            w(ctx, f(a(ctx), b(ctx)), mask)
        return fn
    if op in ('shl', 'shr'):
        a, b = srcs

        def fn(ctx, mask):
            x = _full(ctx, a(ctx)) & wm
            s = _full(ctx, b(ctx)) & M32
            big = s >= U64(bits)
            sc = np.where(big, U64(0), s)
            if op == 'shl':
                r = np.where(big, U64(0), (x << sc) & wm)
            elif signed:
                xs = _sext(x, bits)
                r = (xs >> np.minimum(s, U64(bits - 1)).astype(np.int64)).view(np.uint64)
            else:
                r = np.where(big, U64(0), x >> sc)
            w(ctx, r, mask)
        return fn
    if op == 'popc':
        (a,) = srcs

        def fn(ctx, mask):
            w(ctx, np.bitwise_count(_full(ctx, a(ctx)) & wm).astype(np.uint64), mask)
        return fn
    raise SimError(f"line {ins.line}: unsupported {ins.full}")


def _compile_float(ins, reader, writer, typ):
    op, mods = ins.op, ins.mods
    if op in ('add', 'mul', 'div', 'sub') and 'rn' not in mods:
        raise SimError(f"line {ins.line}: float {op} without .rn (contraction allowed)")
    if 'ftz' in mods:
        raise SimError(f"line {ins.line}: .ftz not modelled (and forbidden by DESIGN.md)")
    w = writer(ins.ops[0])
    srcs = [reader(o) for o in ins.ops[1:]]
    if typ == 'f32':
        cv, back = _f32, _from_f32
    else:
        cv, back = _f64, _from_f64
    if op == 'abs':
        (a,) = srcs
        sm = U64(0x7FFFFFFF) if typ == 'f32' else U64(0x7FFFFFFFFFFFFFFF)

        def fn(ctx, mask):
            w(ctx, a(ctx) & sm, mask)
        return fn
    a, b = srcs
    f = {'add': np.add, 'sub': np.subtract, 'mul': np.multiply, 'div': np.divide,
         'max': np.fmax}[op]

    def fn(ctx, mask):
        x, y = cv(_full(ctx, a(ctx))), cv(_full(ctx, b(ctx)))
        w(ctx, back(f(x, y)), mask)
    return fn


def _compile_setp(ins, reader, writer):
    cmp, typ = ins.mods[0], ins.mods[1]
    w = writer(ins.ops[0])
    a, b = reader(ins.ops[1]), reader(ins.ops[2])
    bits = TYPE_BITS[typ]
    f = {'eq': np.equal, 'ne': np.not_equal, 'lt': np.less, 'le': np.less_equal,
         'gt': np.greater, 'ge': np.greater_equal}[cmp]
    if typ == 'f32':
        def conv(x):
            return _f32(x)
        if cmp == 'ne':
            raise SimError(f"line {ins.line}: setp.ne.f32 NaN semantics not modelled")
    elif typ.startswith('s'):
        def conv(x):
            return _sext(x, bits)
    else:
        wm = wmask(bits)

        def conv(x):
            return x & wm

    def fn(ctx, mask):
        w(ctx, f(conv(_full(ctx, a(ctx))), conv(_full(ctx, b(ctx)))), mask)
    return fn


def _compile_cvt(ins, reader, writer):
    mods = [m for m in ins.mods if m not in ('rn', 'rni')]
    rnd = [m for m in ins.mods if m in ('rn', 'rni')]
    dt, st = mods[0], mods[1]
    w = writer(ins.ops[0])
    a = reader(ins.ops[1])
    key = (tuple(rnd), dt, st)

    if key == (('rni',), 's32', 'f32'):
        def fn(ctx, mask):
            f = _f32(_full(ctx, a(ctx))).astype(np.float64)
            r = np.rint(f)
            r = np.where(np.isnan(r), 0.0, r)
            r = np.clip(r, -2147483648.0, 2147483647.0)
            w(ctx, r.astype(np.int64).view(np.uint64), mask)
    elif key == (('rn',), 'f32', 's32'):
        def fn(ctx, mask):
            w(ctx, _from_f32(_sext(_full(ctx, a(ctx)), 32).astype(np.float32)), mask)
    elif key == (('rn',), 'f32', 'u32'):
        def fn(ctx, mask):
            w(ctx, _from_f32((_full(ctx, a(ctx)) & M32).astype(np.float32)), mask)
    elif key == (('rn',), 'f64', 'u64'):
        def fn(ctx, mask):
            x = _full(ctx, a(ctx))
            # exact: split into halves so the conversion is one correctly rounded operation
            hi = (x >> U64(32)).astype(np.float64) * 4294967296.0
            lo = (x & M32).astype(np.float64)
            w(ctx, _from_f64(hi + lo), mask)
    elif key == (('rn',), 'f32', 'f64'):
        def fn(ctx, mask):
            w(ctx, _from_f32(_f64(_full(ctx, a(ctx))).astype(np.float32)), mask)
    elif key == ((), 'f32', 'f16'):
        def fn(ctx, mask):
            h = (_full(ctx, a(ctx)) & U64(0xFFFF)).astype(np.uint16).view(np.float16)
            w(ctx, _from_f32(h.astype(np.float32)), mask)
    elif key == (('rn',), 'f16', 'f32'):
        def fn(ctx, mask):
            h = _f32(_full(ctx, a(ctx))).astype(np.float16)
            w(ctx, h.view(np.uint16).astype(np.uint64), mask)
    elif key == (('rn',), 'bf16', 'f32'):
        def fn(ctx, mask):
            w(ctx, _bf16_rne(_full(ctx, a(ctx))), mask)
    elif key == ((), 'u32', 'u16'):
        def fn(ctx, mask):
            w(ctx, _full(ctx, a(ctx)) & U64(0xFFFF), mask)
    elif key == ((), 'u64', 'u32'):
        def fn(ctx, mask):
            w(ctx, _full(ctx, a(ctx)) & M32, mask)
    elif key == ((), 'u32', 'u64'):
        def fn(ctx, mask):
            w(ctx, _full(ctx, a(ctx)) & M32, mask)
    else:
        raise SimError(f"line {ins.line}: unsupported {ins.full}")
    return fn


def _bytes_to_u64(b):
    size = b.shape[1]
    if size in (1, 2, 4, 8):
        return np.ascontiguousarray(b).view(f'<u{size}').reshape(-1).astype(np.uint64)
    raise ValueError(size)


def _u64_to_bytes(v, size):
    v = np.asarray(v, dtype=np.uint64)
    return v.astype('<u8').view(np.uint8).reshape(-1, 8)[:, :size]


LD_SIZES = {'u8': 1, 's8': 1, 'b8': 1, 'b16': 2, 'u16': 2, 'u32': 4, 's32': 4, 'b32': 4,
            'f32': 4, 'u64': 8, 's64': 8, 'b64': 8, 'f64': 8}


def _compile_ldst(ins, reader, writer, addr_reader):
    op, mods = ins.op, ins.mods
    space = 'global' if 'global' in mods else 'shared' if 'shared' in mods else None
    if space is None:
        raise SimError(f"line {ins.line}: {ins.full}: state space not modelled")
    vec = 4 if 'v4' in mods else 2 if 'v2' in mods else 1
    typ = mods[-1]
    esize = LD_SIZES[typ]
    if op == 'ld':
        amode = addr_reader(ins.ops[1])
        dsts = ins.ops[0].items if vec > 1 else [ins.ops[0]]
        ws = [writer(d) for d in dsts]
        signed = typ in ('s8',)
        strong = any(m in mods for m in ('relaxed', 'acquire', 'volatile'))

        def fn(ctx, mask):
            lanes = np.nonzero(mask)[0]
            if lanes.size == 0:
                return
            addrs = _full(ctx, _addr(ctx, amode))[lanes]
            ctx.tid_of = lanes
            total = esize * vec
            if space == 'global':
                raw = ctx.gmem.read(addrs, total, ctx, ins, 'ld.global',
                                    mode='ldstrong' if strong else 'ld')
            else:
                raw = _shared_read(ctx, ins, addrs, total, lanes, 'ld.shared')
            for i, wf in enumerate(ws):
                vals = _bytes_to_u64(raw[:, i * esize:(i + 1) * esize])
                if signed:
                    vals = _sext(vals, esize * 8).view(np.uint64)
                full = np.zeros(ctx.N, dtype=np.uint64)
                full[lanes] = vals
                wf(ctx, full, mask)
        return fn
    # st
    amode = addr_reader(ins.ops[0])
    srcs = [reader(o) for o in (ins.ops[1].items if vec > 1 else [ins.ops[1]])]

    def fn(ctx, mask):
        lanes = np.nonzero(mask)[0]
        if lanes.size == 0:
            return
        addrs = _full(ctx, _addr(ctx, amode))[lanes]
        data = np.concatenate([_u64_to_bytes(_full(ctx, sr(ctx))[lanes], esize) for sr in srcs],
                              axis=1)
        ctx.tid_of = lanes
        if space == 'global':
            ctx.gmem.write(addrs, data, ctx, ins, 'st.global')
        else:
            _shared_write(ctx, ins, addrs, data, lanes, 'st.shared')
    return fn


def _addr(ctx, amode):
    kind, a, off = amode
    if kind == 'sym':
        return U64(ctx.smem.sym[a] + off)
    return a(ctx)


def _bank_profile(ctx, ins, addrs, size, lanes):
    """Adds (wavefronts, ideal) of this shared access, per warp, to ctx.prof[line]."""
    prof = ctx.prof
    if prof is None:
        return
    a = addrs.astype(np.int64)
    warps = lanes // 32
    p = prof.setdefault(ins.line, {'warp_exec': 0, 'wavefronts': 0, 'ideal': 0})
    for w in np.unique(warps):
        aw = a[warps == w]
        words = np.unique((aw[:, None] + np.arange(0, size, 4)).reshape(-1) >> 2)
        banks = np.bincount(words % 32, minlength=32)
        p['wavefronts'] += int(banks.max())
        p['ideal'] += int(-(-words.size // 32))


def _shared_read(ctx, ins, addrs, size, lanes, what):
    _bank_profile(ctx, ins, addrs, size, lanes)
    sm = ctx.smem
    a, ok = sm.locate(addrs, size, ctx, ins, what, lanes)
    out = np.zeros((addrs.size, size), dtype=np.uint8)
    if ok.any():
        pos = a[ok][:, None] + np.arange(size)
        out[ok] = sm.data[pos]
        sm.check_read(pos, lanes[ok], ctx, ins, what)
    return out


def _shared_write(ctx, ins, addrs, data, lanes, what):
    _bank_profile(ctx, ins, addrs, data.shape[1], lanes)
    sm = ctx.smem
    size = data.shape[1]
    a, ok = sm.locate(addrs, size, ctx, ins, what, lanes)
    if ok.any():
        pos = a[ok][:, None] + np.arange(size)
        sm.check_write(pos, lanes[ok], ctx, ins, what)
        sm.data[pos] = data[ok]
        sm.init[pos] = True


def _compile_atomic(ins, reader, writer, addr_reader):
    op, mods = ins.op, ins.mods
    if 'shared' in mods:
        return _compile_shared_atomic(ins, reader, writer, addr_reader)
    if 'global' not in mods or 'add' not in mods:
        raise SimError(f"line {ins.line}: unsupported {ins.full}")
    typ = mods[-1]
    if typ not in ('s32', 'u32'):
        raise SimError(f"line {ins.line}: unsupported {ins.full}")
    if op == 'red':
        amode = addr_reader(ins.ops[0])
        src = reader(ins.ops[1])
        w = None
    else:
        amode = addr_reader(ins.ops[1])
        src = reader(ins.ops[2])
        w = writer(ins.ops[0])

    def fn(ctx, mask):
        lanes = np.nonzero(mask)[0]
        if lanes.size == 0:
            return
        addrs = _full(ctx, _addr(ctx, amode))[lanes]
        vals = _full(ctx, src(ctx))[lanes] & M32
        ctx.tid_of = lanes
        old = np.zeros(ctx.N, dtype=np.uint64)
        # one lane at a time, in lane order: exact for add, gives atom its old values
        for j in range(lanes.size):
            cur = ctx.gmem.read(addrs[j:j + 1], 4, ctx, ins, ins.op, mode='atom')
            ov = _bytes_to_u64(cur)
            old[lanes[j]] = ov[0]
            nv = (ov + vals[j:j + 1]) & M32
            ctx.gmem.write(addrs[j:j + 1], _u64_to_bytes(nv, 4), ctx, ins, ins.op, mode=None)
        if w is not None:
            w(ctx, old, mask)
    return fn


def _compile_shared_atomic(ins, reader, writer, addr_reader):
    # atom.shared.{add,max}.u32 d, [a], b: lanes applied one at a time in lane order
    mods = ins.mods
    if ins.op != 'atom' or mods[-1] != 'u32' or not ({'add', 'max'} & set(mods)):
        raise SimError(f"line {ins.line}: unsupported {ins.full}")
    is_max = 'max' in mods
    amode = addr_reader(ins.ops[1])
    src = reader(ins.ops[2])
    w = writer(ins.ops[0])

    def fn(ctx, mask):
        lanes = np.nonzero(mask)[0]
        if lanes.size == 0:
            return
        addrs = _full(ctx, _addr(ctx, amode))[lanes]
        vals = _full(ctx, src(ctx))[lanes] & M32
        ctx.tid_of = lanes
        old = np.zeros(ctx.N, dtype=np.uint64)
        # Atomics may race with each other by design: they bypass the race detector (a plain
        # access racing with an atomic is therefore not reported); uninitialised reads are.
        sm = ctx.smem
        a, ok = sm.locate(addrs, 4, ctx, ins, 'atom.shared', lanes)
        for j in range(lanes.size):
            if not ok[j]:
                continue
            pos = a[j] + np.arange(4)
            if not sm.init[pos].all():
                ctx.report.add('uninit-shared', f"atom.shared reads uninitialised {int(a[j]):#x}",
                               ins, ctx.cta_id)
            cur = _bytes_to_u64(sm.data[pos][None, :])
            old[lanes[j]] = cur[0]
            nv = np.maximum(cur, vals[j:j + 1]) if is_max else (cur + vals[j:j + 1]) & M32
            sm.data[pos] = _u64_to_bytes(nv, 4)[0]
            sm.init[pos] = True
        w(ctx, old, mask)
    return fn


def _compile_cp(ins, reader, writer, addr_reader):
    mods = ins.mods
    if mods[:2] == ['async', 'commit_group']:
        def fn(ctx, mask):
            ca = ctx.cpa
            ca['commits'][mask] += 1
            for b in ca['batches']:
                sel = (b['group'] < 0) & mask[b['lanes']]
                b['group'][sel] = ca['commits'][b['lanes'][sel]]
        return fn
    if mods[:2] == ['async', 'wait_group']:
        nkeep = ins.ops[0].value

        def fn(ctx, mask):
            _cp_land(ctx, ins, mask, nkeep)
        return fn
    if mods[:4] == ['async', 'cg', 'shared', 'global']:
        dmode = addr_reader(ins.ops[0])
        smode = addr_reader(ins.ops[1])
        cpsize = ins.ops[2].value
        if cpsize != 16:
            raise SimError(f"line {ins.line}: cp.async.cg needs cp-size 16")
        srcsz = reader(ins.ops[3]) if len(ins.ops) > 3 else (lambda ctx: U64(cpsize))

        def fn(ctx, mask):
            lanes = np.nonzero(mask)[0]
            if lanes.size == 0:
                return
            ctx.tid_of = lanes
            dst = _full(ctx, _addr(ctx, dmode))[lanes]
            src = _full(ctx, _addr(ctx, smode))[lanes]
            ss = (_full(ctx, srcsz(ctx))[lanes] & M32).astype(np.int64)
            if (ss > cpsize).any():
                ctx.report.add('cp.async', f"src-size {int(ss.max())} > cp-size", ins, ctx.cta_id)
                ss = np.minimum(ss, cpsize)
            data = np.zeros((lanes.size, cpsize), dtype=np.uint8)
            rd = ss > 0
            if rd.any():
                # bytes beyond src-size are never read; read each lane's src-size prefix
                full16 = rd & (ss == cpsize)
                if full16.any():
                    ctx.tid_of = lanes[full16]
                    data[full16] = ctx.gmem.read(src[full16], cpsize, ctx, ins, 'cp.async source')
                part = rd & ~full16
                for j in np.nonzero(part)[0]:
                    ctx.tid_of = lanes[j:j + 1]
                    data[j, :ss[j]] = ctx.gmem.read(src[j:j + 1], int(ss[j]), ctx, ins,
                                                    'cp.async source', check_align=False)[0]
                mis = rd & (src % U64(16) != 0)
                if mis.any():
                    ctx.report.add('global-misaligned', 'cp.async.cg source not 16-byte '
                                   'aligned', ins, ctx.cta_id)
            sm = ctx.smem
            ctx.tid_of = lanes
            _bank_profile(ctx, ins, dst, cpsize, lanes)
            a, ok = sm.locate(dst, cpsize, ctx, ins, 'cp.async destination', lanes)
            if not ok.all():
                lanes, a, data = lanes[ok], a[ok], data[ok]
            if lanes.size == 0:
                return
            pos = a[:, None] + np.arange(cpsize)
            # the copy may land at any time from now on: check it against this epoch's accesses
            sm.check_write(pos, lanes, ctx, ins, 'cp.async (issue)')
            sm.pending[pos] += 1
            ctx.cpa['batches'].append({
                'lanes': lanes, 'pos': pos, 'data': data,
                'group': np.full(lanes.size, -1, dtype=np.int64),
                'done': np.zeros(lanes.size, dtype=bool), 'ins': ins,
            })
        return fn
    raise SimError(f"line {ins.line}: unsupported {ins.full}")


def _cp_land(ctx, ins, mask, nkeep):
    ca = ctx.cpa
    sm = ctx.smem
    keep = []
    for b in ca['batches']:
        L = b['lanes']
        limit = ca['commits'][L] - nkeep
        sel = (~b['done']) & (b['group'] >= 0) & mask[L] & (b['group'] <= limit)
        if sel.any():
            pos = b['pos'][sel]
            sm.pending[pos] -= 1
            sm.check_write(pos, L[sel], ctx, ins, 'cp.async (landing at wait_group)',
                           ignore_pending=True)
            sm.data[pos] = b['data'][sel]
            sm.init[pos] = True
            b['done'][sel] = True
        if not b['done'].all():
            keep.append(b)
    ca['batches'] = keep


# ----------------------------------------------------------------------------- warp level

def _compile_warp(ins, reader, writer, addr_reader, op):
    if op == 'vote':
        if ins.mods != ['sync', 'ballot', 'b32']:
            raise SimError(f"line {ins.line}: unsupported {ins.full}")
        w = writer(ins.ops[0])
        p = reader(ins.ops[1])
        mm = ins.ops[2].value

        def fn(ctx, mask, warps):
            if mm != 0xFFFFFFFF:
                ctx.report.add('collective', 'membermask other than full not modelled', ins,
                               ctx.cta_id)
            pv = np.asarray(p(ctx), dtype=bool) & np.ones(ctx.N, bool)
            out = np.zeros(ctx.N, dtype=np.uint64)
            for wi in warps:
                sl = slice(32 * wi, 32 * wi + 32)
                bits = (pv[sl].astype(np.uint64) << np.arange(32, dtype=np.uint64)).sum()
                out[sl] = bits
            w(ctx, out, mask)
        return fn
    if op == 'shfl':
        if ins.mods != ['sync', 'bfly', 'b32']:
            raise SimError(f"line {ins.line}: unsupported {ins.full}")
        w = writer(ins.ops[0])
        a = reader(ins.ops[1])
        bsrc, csrc = reader(ins.ops[2]), reader(ins.ops[3])
        mm = ins.ops[4].value

        def fn(ctx, mask, warps):
            if mm != 0xFFFFFFFF:
                ctx.report.add('collective', 'membermask other than full not modelled', ins,
                               ctx.cta_id)
            av = _full(ctx, a(ctx))
            bv = (_full(ctx, bsrc(ctx)) & U64(31)).astype(np.int64)
            cv = _full(ctx, csrc(ctx)).astype(np.int64)
            lane = ctx.lane.astype(np.int64)
            clamp = cv & 31
            segmask = (cv >> 8) & 31
            maxl = (lane & segmask) | (clamp & ~segmask)
            j = lane ^ bv
            j = np.where(j > maxl, lane, j)
            src = (ctx.tid.astype(np.int64) & ~31) + j
            w(ctx, av[src], mask)
        return fn
    if op == 'ldmatrix':
        if ins.mods != ['sync', 'aligned', 'm8n8', 'x4', 'shared', 'b16']:
            raise SimError(f"line {ins.line}: unsupported {ins.full}")
        ws = [writer(d) for d in ins.ops[0].items]
        amode = addr_reader(ins.ops[1])

        def fn(ctx, mask, warps):
            addr = _full(ctx, _addr(ctx, amode))
            outs = [np.zeros(ctx.N, dtype=np.uint64) for _ in range(4)]
            for wi in warps:
                base = 32 * wi
                lanes = np.arange(base, base + 32)
                rowaddr = addr[lanes]          # lane 8m + r gives row r of matrix m
                ctx.tid_of = lanes
                raw = _shared_read(ctx, ins, rowaddr, 16, lanes, 'ldmatrix')  # (32,16)
                words = np.ascontiguousarray(raw).view('<u4').reshape(32, 4)
                L = np.arange(32)
                for m in range(4):
                    # lane 4r + c receives 32-bit word c (bytes 4c..4c+3) of row r of matrix m
                    outs[m][base:base + 32] = words[8 * m + (L >> 2), L & 3]
            for m in range(4):
                ws[m](ctx, outs[m], mask)
        return fn
    if op == 'mma':
        if ins.mods != ['sync', 'aligned', 'm16n8k32', 'row', 'col', 's32', 's8', 's8', 's32']:
            raise SimError(f"line {ins.line}: unsupported {ins.full}")
        dws = [writer(d) for d in ins.ops[0].items]
        ars = [reader(o) for o in ins.ops[1].items]
        brs = [reader(o) for o in ins.ops[2].items]
        crs = [reader(o) for o in ins.ops[3].items]
        lane = np.arange(32)
        g, t = lane >> 2, lane & 3

        def fn(ctx, mask, warps):
            A = [_full(ctx, r(ctx)) for r in ars]
            B = [_full(ctx, r(ctx)) for r in brs]
            C = [_full(ctx, r(ctx)) for r in crs]
            D = [np.zeros(ctx.N, dtype=np.uint64) for _ in range(4)]
            for wi in warps:
                sl = slice(32 * wi, 32 * wi + 32)
                Am = np.zeros((16, 32), dtype=np.int64)
                Bm = np.zeros((32, 8), dtype=np.int64)
                Cm = np.zeros((16, 8), dtype=np.int64)
                for reg in range(4):
                    by = _u64_to_bytes(A[reg][sl], 4).view(np.int8).astype(np.int64)  # (32,4)
                    row = g + 8 * (reg & 1)
                    col0 = 4 * t + 16 * (reg >> 1)
                    for j in range(4):
                        Am[row, col0 + j] = by[:, j]
                for reg in range(2):
                    by = _u64_to_bytes(B[reg][sl], 4).view(np.int8).astype(np.int64)
                    for j in range(4):
                        Bm[4 * t + j + 16 * reg, g] = by[:, j]
                for reg in range(4):
                    Cm[g + 8 * (reg >> 1), 2 * t + (reg & 1)] = _sext(C[reg][sl], 32)
                Dm = Am @ Bm + Cm
                for reg in range(4):
                    D[reg][sl] = Dm[g + 8 * (reg >> 1), 2 * t + (reg & 1)].view(np.uint64) & M32
            for reg in range(4):
                dws[reg](ctx, D[reg], mask)
        return fn
    raise SimError(f"line {ins.line}: unsupported {ins.full}")


# ----------------------------------------------------------------------------- launch

def launch(kernel, grid, block, params, gmem, dyn_smem=0, order='forward', seed=0,
           report=None, max_steps=200_000, check_regs=True, prof=None):
    """Runs every CTA of the grid, one after another. Returns the Report."""
    if report is None:
        report = Report()
    gx, gy, gz = grid
    N = block
    if N % 32:
        raise SimError("block size must be a multiple of 32")
    pnames = {p for p, _ in kernel.params}
    missing = pnames - set(params)
    extra = set(params) - pnames
    if missing or extra:
        raise SimError(f"{kernel.name}: missing params {sorted(missing)}, unknown {sorted(extra)}")
    ctas = [(x, y, z) for z in range(gz) for y in range(gy) for x in range(gx)]
    if order == 'reverse':
        ctas = ctas[::-1]
    elif order == 'shuffle':
        rng = np.random.default_rng(seed)
        ctas = [ctas[i] for i in rng.permutation(len(ctas))]
    smem = SharedMemory(kernel, dyn_smem)
    stats = {'steps': 0, 'ctas': 0}
    gmem.begin_launch()
    for cta in ctas:
        smem.reset()
        _run_cta(kernel, cta, grid, N, params, gmem, smem, report, max_steps, stats, check_regs,
                 prof)
        stats['ctas'] += 1
    report.stats = stats
    return report


def _run_cta(k, cta, grid, N, params, gmem, smem, report, max_steps, stats, check_regs,
             prof=None):
    ctx = Ctx()
    ctx.prof = prof
    ctx.N = N
    ctx.tid = np.arange(N, dtype=np.uint64)
    ctx.lane = ctx.tid & U64(31)
    ctx.ctaid = cta
    ctx.nctaid = grid
    ctx.cta_id = cta
    ctx.cta_index = cta[0] + grid[0] * (cta[1] + grid[1] * cta[2])
    ctx.params = params
    ctx.gmem = gmem
    ctx.smem = smem
    ctx.report = report
    ctx.epoch = 0
    ctx.tid_of = np.arange(N)
    ctx.R, ctx.D, ctx.P, ctx.Dfull = {}, {}, {}, {}
    for name, t in k.regs.items():
        if t == 'pred':
            ctx.P[name] = np.zeros(N, dtype=bool)
        else:
            ctx.R[name] = np.zeros(N, dtype=np.uint64)
        ctx.D[name] = np.zeros(N, dtype=bool)
    ctx.cpa = {'commits': np.zeros(N, dtype=np.int64), 'batches': []}
    instrs = k.instrs
    nw = N // 32
    groups = {0: np.ones(N, dtype=bool)}
    exited = np.zeros(N, dtype=bool)
    steps = 0
    warned_undef = set()
    with np.errstate(all='ignore'):
        while groups:
            steps += 1
            if len(report.items) > 2000 or sum(report.counts.values()) > 20000:
                report.add('aborted', 'too many findings; CTA abandoned', None, cta, fatal=True)
                return
            if steps > max_steps:
                report.add('hang', f"more than {max_steps} steps; threads at lines "
                           f"{sorted({instrs[p].line for p in groups})}", None, cta, fatal=True)
                return
            chosen = None
            for pc in sorted(groups):
                ins = instrs[pc]
                if ins.kind in ('normal', 'bra', 'ret'):
                    chosen = pc
                    break
                m = groups[pc]
                if ins.kind == 'warp':
                    wm = m.reshape(nw, 32)
                    full = wm.all(axis=1)
                    if full.any():
                        chosen = pc
                        break
                elif ins.kind == 'bar':
                    waiting = np.zeros(N, dtype=bool)
                    for p2, m2 in groups.items():
                        if instrs[p2].kind == 'bar':
                            waiting |= m2
                    if (waiting | exited).all():
                        chosen = pc
                        break
            if chosen is None:
                _deadlock(k, groups, exited, report, cta, nw)
                return
            pc = chosen
            ins = instrs[pc]
            mask = groups.pop(pc)
            ctx.pc = pc
            if prof is not None:
                pl = prof.setdefault(ins.line, {'warp_exec': 0, 'wavefronts': 0, 'ideal': 0})
                pl['warp_exec'] += int(mask.reshape(nw, 32).any(axis=1).sum())
            if ins.kind == 'bar':
                pcs = [p for p in list(groups) if instrs[p].kind == 'bar']
                if pcs:
                    report.add('bar-divergence', f"threads released from bar.sync at "
                               f"different lines {sorted(instrs[p].line for p in pcs + [pc])}",
                               ins, cta)
                if exited.any():
                    report.add('bar-exited', f"bar.sync with {int(exited.sum())} exited "
                               f"thread(s) in the CTA", ins, cta)
                released = [(pc, mask)] + [(p, groups.pop(p)) for p in pcs]
                ctx.epoch += 1
                for p, m in released:
                    _advance(groups, p + 1, m)
                continue
            if check_regs:
                _check_defined(ctx, ins, mask, warned_undef, report, cta)
            if ins.kind == 'warp':
                wm = mask.reshape(nw, 32)
                full = wm.all(axis=1)
                warps = np.nonzero(full)[0]
                run = np.repeat(full, 32)
                rest = mask & ~run
                if rest.any():
                    groups[pc] = rest
                if ins.guard is not None:
                    report.add('collective', 'predicated warp collective not modelled', ins, cta)
                ins.fn(ctx, run, warps)
                _advance(groups, pc + 1, run)
                continue
            if ins.guard is not None:
                g = ctx.P[ins.guard[0]]
                act = mask & (~g if ins.guard[1] else g)
            else:
                act = mask
            if ins.kind == 'bra':
                taken = act
                if 'uni' in ins.mods:
                    wt = taken.reshape(nw, 32)
                    wmk = mask.reshape(nw, 32)
                    div = (wt.any(axis=1) & ~(wt == wmk).all(axis=1))
                    if div.any():
                        report.add('bra.uni-divergent', 'bra.uni taken by part of a warp', ins,
                                   cta)
                nt = mask & ~taken
                if taken.any():
                    _advance(groups, ins.target, taken)
                if nt.any():
                    _advance(groups, pc + 1, nt)
                continue
            if ins.kind == 'ret':
                exited |= act
                nt = mask & ~act
                if nt.any():
                    _advance(groups, pc + 1, nt)
                continue
            if act.any():
                ins.fn(ctx, act)
            _advance(groups, pc + 1, mask)
    stats['steps'] += steps
    # leftovers
    if ctx.cpa['batches']:
        n = sum(int((~b['done']).sum()) for b in ctx.cpa['batches'])
        report.add('cp.async-not-waited', f"{n} cp.async copies never waited for at exit",
                   None, cta)


def _advance(groups, pc, m):
    if not m.any():
        return
    cur = groups.get(pc)
    if cur is None:
        groups[pc] = m.copy()
    else:
        cur |= m


def _check_defined(ctx, ins, mask, warned, report, cta):
    # guard predicate first
    if ins.guard is not None:
        gname = ins.guard[0]
        if not ctx.Dfull.get(gname, False) and not ctx.D[gname][mask].all():
            key = (ins.line, gname)
            if key not in warned:
                warned.add(key)
                report.add('undefined-register', f"guard {gname} read before it is written",
                           ins, cta)
        g = ctx.P[gname]
        act = mask & (~g if ins.guard[1] else g)
    else:
        act = mask
    for name in ins.srcregs + tuple(p for p in ins.srcpreds if ins.guard is None or p != ins.guard[0]):
        if ctx.Dfull.get(name, False):
            continue
        if not ctx.D[name][act].all():
            key = (ins.line, name)
            if key not in warned:
                warned.add(key)
                t = int(np.nonzero(act & ~ctx.D[name])[0][0])
                report.add('undefined-register', f"{name} read before it is written "
                           f"(thread {t})", ins, cta)


def _deadlock(k, groups, exited, report, cta, nw):
    desc = []
    for pc, m in sorted(groups.items()):
        ins = k.instrs[pc]
        ws = sorted({int(i) // 32 for i in np.nonzero(m)[0]})
        desc.append(f"line {ins.line} ({ins.full}): {int(m.sum())} threads, warps {ws}")
    kinds = {k.instrs[pc].kind for pc in groups}
    kind = 'collective-divergence' if 'warp' in kinds else 'deadlock'
    report.add(kind, "no thread can proceed; " + '; '.join(desc) +
               (f"; {int(exited.sum())} exited" if exited.any() else ''), None, cta, fatal=True)
