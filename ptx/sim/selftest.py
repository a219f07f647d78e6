#!/usr/bin/env python3
"""Self-tests of ptxsim's instruction semantics and detectors on tiny hand-written kernels.

    python3 ptx/sim/selftest.py
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ptxsim  # noqa: E402

HEAD = """
.version 8.0
.target sm_80
.address_size 64
.extern .shared .align 128 .b8 dyn[];
"""


def run(body, params, grid=(1, 1, 1), block=32, dyn=0, buffers=(), regs=''):
    plist = ',\n'.join(f'    .param .u64 {p}' for p in params)
    src = HEAD + f""".visible .entry t(
{plist}
)
{{
    .shared .align 16 .b8 st[64];
    .reg .pred %p<8>;
    .reg .b32 %r<32>;
    .reg .b64 %rd<16>;
    .reg .f32 %f<8>;
    .reg .f64 %fd<4>;
    .reg .b16 %h;
{regs}
{body}
}}
"""
    k = ptxsim.parse_module(src)['t']
    ptxsim.compile_kernel(k)
    g = ptxsim.GlobalMemory()
    addrs = {}
    for name, arr in buffers:
        addrs[name] = g.alloc(name, data=arr)
    rep = ptxsim.launch(k, grid, block, {p: addrs[p] for p in params}, g, dyn)
    return g, addrs, rep


def out(g, addrs, name, dtype):
    return g.view(addrs[name], dtype).copy()


def check(cond, what):
    print(('ok   ' if cond else 'FAIL ') + what)
    return bool(cond)


def t_mma_ldmatrix():
    """ldmatrix.x4 of a row-major 16x32 A tile and of an 8x32 (N x K) B tile + mma = A @ B^T."""
    rng = np.random.default_rng(1)
    A = rng.integers(-128, 128, size=(16, 32)).astype(np.int8)
    B = rng.integers(-128, 128, size=(16, 32)).astype(np.int8)   # two n8 tiles, N x K
    C = rng.integers(-1000, 1000, size=(16, 16)).astype(np.int32)
    # C fragment per PTX ISA (row g / g+8, col 2t + (i&1)) loaded from global per lane
    body = """
    mov.u32 %r0, %tid.x;
    ld.param.u64 %rd0, [a];  ld.param.u64 %rd1, [b];  ld.param.u64 %rd2, [c];  ld.param.u64 %rd3, [d];
    // copy A (512 B) and B (512 B) to dynamic shared memory: 16 bytes per lane each
    mov.u32 %r1, dyn;
    shl.b32 %r2, %r0, 4;
    add.u32 %r3, %r1, %r2;
    cvt.u64.u32 %rd4, %r2;
    add.u64 %rd5, %rd0, %rd4;
    cp.async.cg.shared.global [%r3], [%rd5], 16, 16;
    add.u64 %rd5, %rd1, %rd4;
    add.u32 %r4, %r3, 512;
    cp.async.cg.shared.global [%r4], [%rd5], 16, 16;
    cp.async.commit_group;
    cp.async.wait_group 0;
    bar.sync 0;
    // A: lane l addresses row (l & 15), K half (l >> 4)  -> regs a0..a3 in mma order
    and.b32 %r5, %r0, 15;  shr.u32 %r6, %r0, 4;
    shl.b32 %r5, %r5, 5;   shl.b32 %r6, %r6, 4;
    add.u32 %r5, %r5, %r6; add.u32 %r5, %r5, %r1;
    ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r8, %r9, %r10, %r11}, [%r5];
    // B: lane l addresses n row (l & 7) + 8 (l >> 4), K half ((l >> 3) & 1)
    and.b32 %r5, %r0, 7;  shr.u32 %r6, %r0, 4;  shl.b32 %r6, %r6, 3;  add.u32 %r5, %r5, %r6;
    shl.b32 %r5, %r5, 5;
    shr.u32 %r6, %r0, 3;  and.b32 %r6, %r6, 1;  shl.b32 %r6, %r6, 4;  add.u32 %r5, %r5, %r6;
    add.u32 %r5, %r5, %r1; add.u32 %r5, %r5, 512;
    ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r12, %r13, %r14, %r15}, [%r5];
    // C fragments: g = l>>2, t = l&3; c0 (g,2t) c1 (g,2t+1) c2 (g+8,2t) c3 (g+8,2t+1); n tile j at +8j
    shr.u32 %r16, %r0, 2;  and.b32 %r17, %r0, 3;
    shl.b32 %r18, %r16, 4; shl.b32 %r19, %r17, 1; add.u32 %r18, %r18, %r19;   // g*16 + 2t
    mul.wide.u32 %rd6, %r18, 4;  add.u64 %rd7, %rd2, %rd6;
    ld.global.u32 %r20, [%rd7];      ld.global.u32 %r21, [%rd7+4];
    ld.global.u32 %r22, [%rd7+512];  ld.global.u32 %r23, [%rd7+516];
    ld.global.u32 %r24, [%rd7+32];   ld.global.u32 %r25, [%rd7+36];
    ld.global.u32 %r26, [%rd7+544];  ld.global.u32 %r27, [%rd7+548];
    mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%r20, %r21, %r22, %r23}, {%r8, %r9, %r10, %r11}, {%r12, %r13}, {%r20, %r21, %r22, %r23};
    mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%r24, %r25, %r26, %r27}, {%r8, %r9, %r10, %r11}, {%r14, %r15}, {%r24, %r25, %r26, %r27};
    add.u64 %rd8, %rd3, %rd6;
    st.global.u32 [%rd8], %r20;      st.global.u32 [%rd8+4], %r21;
    st.global.u32 [%rd8+512], %r22;  st.global.u32 [%rd8+516], %r23;
    st.global.u32 [%rd8+32], %r24;   st.global.u32 [%rd8+36], %r25;
    st.global.u32 [%rd8+544], %r26;  st.global.u32 [%rd8+548], %r27;
    ret;
"""
    D0 = np.zeros((16, 16), dtype=np.int32)
    g, ad, rep = run(body, ['a', 'b', 'c', 'd'], dyn=1024,
                     buffers=[('a', A), ('b', B), ('c', C), ('d', D0)])
    D = out(g, ad, 'd', np.int32).reshape(16, 16)
    exp = (A.astype(np.int64) @ B.astype(np.int64).T + C).astype(np.int32)
    return check((D == exp).all() and not rep, 'ldmatrix.x4 + mma.m16n8k32 s8 = A.B^T + C '
                 f'(findings: {rep.format() or "none"})')


def t_shfl_vote_cvt():
    x = np.array([1.5, 2.5, -2.5, 0.49999997, np.nan, 3e9, -3e9, np.inf] * 4, dtype=np.float32)
    body = """
    mov.u32 %r0, %tid.x;
    ld.param.u64 %rd0, [x];  ld.param.u64 %rd1, [o];
    mul.wide.u32 %rd2, %r0, 4;  add.u64 %rd3, %rd0, %rd2;
    ld.global.f32 %f0, [%rd3];
    cvt.rni.s32.f32 %r1, %f0;                 // half-even, NaN -> 0, saturating
    shfl.sync.bfly.b32 %r2, %r0, 5, 31, 0xffffffff;
    and.b32 %r3, %r0, 3;
    setp.eq.u32 %p0, %r3, 1;
    vote.sync.ballot.b32 %r4, %p0, 0xffffffff;
    mov.u32 %r5, %lanemask_lt;
    cvt.rn.f16.f32 %h, %f0;  cvt.u32.u16 %r6, %h;
    cvt.rn.bf16.f32 %h, %f0; cvt.u32.u16 %r7, %h;
    mul.wide.u32 %rd4, %r0, 24;  add.u64 %rd5, %rd1, %rd4;
    st.global.u32 [%rd5], %r1;  st.global.u32 [%rd5+4], %r2;  st.global.u32 [%rd5+8], %r4;
    st.global.u32 [%rd5+12], %r5; st.global.u32 [%rd5+16], %r6; st.global.u32 [%rd5+20], %r7;
    ret;
"""
    o = np.zeros((32, 6), dtype=np.uint32)
    g, ad, rep = run(body, ['x', 'o'], buffers=[('x', x), ('o', o)])
    r = out(g, ad, 'o', np.uint32).reshape(32, 6)
    rni = r[:, 0].view(np.int32)
    exp_rni = np.array([2, 2, -2, 0, 0, 2147483647, -2147483648, 2147483647] * 4)
    ok = check((rni == exp_rni).all(), f"cvt.rni.s32.f32 ties/NaN/saturation: {rni[:8]}")
    ok &= check((r[:, 1] == (np.arange(32) ^ 5)).all(), 'shfl.sync.bfly lane ^ 5')
    ok &= check((r[:, 2] == 0x22222222).all(), 'vote.sync.ballot')
    ok &= check((r[:, 3] == (1 << np.arange(32, dtype=np.uint64)) - 1).all(), '%lanemask_lt')
    with np.errstate(all='ignore'):
        f16 = x.astype(np.float16).view(np.uint16)
    fin = ~np.isnan(x)
    ok &= check((r[fin, 4] == f16[fin]).all(), 'cvt.rn.f16.f32 (non-NaN inputs)')
    bf = r[:, 5]
    exp_bf = [0x3FC0, 0x4020, 0xC020, 0x3F00, 0x7FFF, 0x4F33, 0xCF33, 0x7F80]
    ok &= check(list(bf[:8]) == exp_bf, f"cvt.rn.bf16.f32 {[hex(v) for v in bf[:8]]}")
    return ok and not rep


def t_detectors():
    ok = True
    # 1. read of a cp.async destination before wait_group
    body = """
    mov.u32 %r0, %tid.x;  ld.param.u64 %rd0, [a];
    mov.u32 %r1, dyn;  shl.b32 %r2, %r0, 4;  add.u32 %r3, %r1, %r2;
    cvt.u64.u32 %rd1, %r2;  add.u64 %rd2, %rd0, %rd1;
    cp.async.cg.shared.global [%r3], [%rd2], 16, 16;
    cp.async.commit_group;
    ld.shared.u32 %r4, [%r3];
    cp.async.wait_group 0;
    ret;
"""
    _, _, rep = run(body, ['a'], dyn=512, buffers=[('a', np.zeros(512, np.uint8))])
    ok &= check(any(i['kind'] == 'cp.async-inflight-read' for i in rep.items),
                'detects a read before cp.async.wait_group')
    # 2. zero fill beyond src-size, data lands only at wait_group
    body = """
    mov.u32 %r0, %tid.x;  ld.param.u64 %rd0, [a];  ld.param.u64 %rd3, [o];
    mov.u32 %r1, dyn;  shl.b32 %r2, %r0, 4;  add.u32 %r3, %r1, %r2;
    cvt.u64.u32 %rd1, %r2;  add.u64 %rd2, %rd0, %rd1;
    cp.async.cg.shared.global [%r3], [%rd2], 16, %r0;     // lane l copies l bytes (l <= 16)
    cp.async.commit_group;
    cp.async.wait_group 0;
    ld.shared.v4.u32 {%r4, %r5, %r6, %r7}, [%r3];
    add.u64 %rd4, %rd3, %rd1;
    st.global.u32 [%rd4], %r4;  st.global.u32 [%rd4+4], %r5;
    st.global.u32 [%rd4+8], %r6;  st.global.u32 [%rd4+12], %r7;
    ret;
"""
    a = np.full(512, 0xAB, np.uint8)
    g, ad, rep = run(body, ['a', 'o'], dyn=512, block=32,
                     buffers=[('a', a), ('o', np.zeros(512, np.uint8))])
    o = out(g, ad, 'o', np.uint8).reshape(32, 16)
    exp = np.array([[0xAB if j < min(l, 16) else 0 for j in range(16)] for l in range(32)])
    ok &= check((o[:17] == exp[:17]).all(), 'cp.async src-size zero fill')
    ok &= check(any(i['kind'] == 'cp.async' for i in rep.items), 'src-size > cp-size reported')
    # 3. shared race without bar.sync, and its absence with one
    for bar, want in (('', True), ('bar.sync 0;', False)):
        body = f"""
    mov.u32 %r0, %tid.x;  mov.u32 %r1, dyn;
    shl.b32 %r2, %r0, 2;  add.u32 %r2, %r1, %r2;
    st.shared.u32 [%r2], %r0;
    {bar}
    xor.b32 %r3, %r0, 1;  shl.b32 %r3, %r3, 2;  add.u32 %r3, %r1, %r3;
    ld.shared.u32 %r4, [%r3];
    ret;
"""
        _, _, rep = run(body, [], block=64, dyn=256)
        got = any(i['kind'] == 'shared-race' for i in rep.items)
        ok &= check(got == want, f"shared race {'reported' if want else 'absent'} "
                                 f"{'without' if want else 'with'} bar.sync")
    # 4. divergence at a warp collective
    body = """
    mov.u32 %r0, %tid.x;  setp.lt.u32 %p0, %r0, 3;
    @%p0 bra SKIP;
    shfl.sync.bfly.b32 %r1, %r0, 1, 31, 0xffffffff;
SKIP:
    ret;
"""
    _, _, rep = run(body, [])
    ok &= check(any(i['kind'] == 'collective-divergence' for i in rep.items),
                'divergent shfl reported')
    # 5. out-of-bounds global access and uninitialised shared read
    body = """
    mov.u32 %r0, %tid.x;  ld.param.u64 %rd0, [a];
    mul.wide.u32 %rd1, %r0, 4;  add.u64 %rd2, %rd0, %rd1;
    ld.global.u32 %r1, [%rd2];
    mov.u32 %r2, st;  ld.shared.u32 %r3, [%r2+60];
    ret;
"""
    _, _, rep = run(body, ['a'], buffers=[('a', np.zeros(31, np.uint32))])
    ok &= check(any(i['kind'] == 'global-oob' for i in rep.items), 'global OOB reported')
    ok &= check(any(i['kind'] == 'shared-uninit' for i in rep.items), 'uninitialised shared read')
    return ok


def main():
    ok = True
    for t in (t_mma_ldmatrix, t_shfl_vote_cvt, t_detectors):
        ok &= bool(t())
    print('selftest', 'passed' if ok else 'FAILED')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
