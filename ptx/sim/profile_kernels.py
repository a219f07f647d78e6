#!/usr/bin/env python3
"""Per-region warp-instruction counts and shared-memory bank-conflict ratios of the two kernels,
measured in ptxsim on one shape (counts, not timings: the simulator has no clock).

    python3 ptx/sim/profile_kernels.py --T 512 --P 2 --ci 256 --r 64 --co 128

Regions are the labels of the .ptx files (a line belongs to the label above it). The bank
column is wavefronts / conflict-free minimum summed over the warp accesses of the region's
shared-memory instructions (1.00 = no bank conflicts).
"""

import argparse
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_kernels as ck  # noqa: E402
import ptxsim  # noqa: E402


def regions(path):
    lab = 'ENTRY'
    out = {}
    for i, ln in enumerate(open(path).read().split('\n'), 1):
        m = re.match(r'^([A-Za-z_]\w*):', ln.strip())
        if m:
            lab = m.group(1)
        out[i] = lab
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--T', type=int, default=512)
    ap.add_argument('--P', type=int, default=2)
    ap.add_argument('--ci', type=int, default=256)
    ap.add_argument('--r', type=int, default=64)
    ap.add_argument('--co', type=int, default=128)
    ap.add_argument('--kchunk', type=int, default=0, help='0: no split')
    ap.add_argument('--int4', action='store_true')
    ap.add_argument('--ptx-dir', default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    a = ap.parse_args()
    ks = ck.load_kernels(a.ptx_dir)
    # a case with the requested shape
    c = None
    for seed in range(1, 10000):
        c = ck.make_case(seed)
        if c['grouped'] and not c['big']:
            break
    rng = np.random.default_rng(0)
    T, P = a.T, a.P
    c.update(T=T, C_i=a.ci, C_o=a.co, P=P, S=(T + 63) // 64, Ci_pad=ck.pad32(a.ci), tap=False,
             x_stride=a.ci, y_stride=a.co, x_dtype=1, y_dtype=1, grouped=True)
    c['k_chunk'] = a.kchunk or max(128, (c['Ci_pad'] + 127) // 128 * 128)
    por = rng.integers(0, P, size=T).astype(np.uint32)
    c['pack_of_row'], c['row_pack'] = por, [int(v) for v in por]
    x = rng.standard_normal((T, a.ci)).astype(np.float32)
    c['x_store'] = x.astype(np.float16)
    c['x_f32'] = c['x_store'].astype(np.float32)
    c['y_store'] = np.zeros((T, a.co), np.float16)
    c['y_f32'] = np.zeros((T, a.co), np.float32)
    packs = []
    for p in range(P):
        R, Rp = a.r, ck.pad32(a.r)
        q = 7 if a.int4 else 127
        A = rng.integers(-q, q + 1, size=(R, a.ci))
        B = rng.integers(-q, q + 1, size=(a.co, R))
        packs.append({'R': R, 'Rp_pad': Rp, 'a4': a.int4, 'b4': a.int4, 'A': A, 'B': B,
                      's_inv': None, 'sigma_a': np.float32(0.01),
                      'sigma_b': np.full(a.co, 0.01, np.float32), 'qmax': 127,
                      'static_amax': None, 'static_m': None,
                      'A_packed': (ck.pack_int4 if a.int4 else ck.pack_int8)(A, Rp, c['Ci_pad']),
                      'B_packed': (ck.pack_int4 if a.int4 else ck.pack_int8)(B, a.co, Rp)})
    c['packs'] = packs
    c['R_max'] = max(p['Rp_pad'] for p in packs)
    profs = {}
    orig = ptxsim.launch

    def launch(k, grid, block, params, g, dyn, order, seed, rep):
        key = (k.name, params.get('p_stage'))
        prof = profs.setdefault(key, {})
        return orig(k, grid, block, params, g, dyn, order, seed, rep, prof=prof)
    ptxsim.launch = launch
    errors, rep = ck.run_case(c, ks)
    ptxsim.launch = orig
    print(f"T={T} P={P} C_i={a.ci} R={a.r} C_o={a.co} k_chunk={c['k_chunk']} "
          f"{'INT4' if a.int4 else 'INT8'}: {'PASS' if not errors and not rep else 'FAIL'}")
    for (name, stage), prof in profs.items():
        f = 'quantize.ptx' if 'quantize' in name else 'lowrank.ptx'
        reg = regions(os.path.join(a.ptx_dir, f))
        agg = {}
        for line, p in prof.items():
            r = agg.setdefault(reg[line], [0, 0, 0])
            r[0] += p['warp_exec']
            r[1] += p['wavefronts']
            r[2] += p['ideal']
        total = sum(v[0] for v in agg.values())
        print(f"\n{name}{'' if stage is None else ' stage ' + str(stage)}: "
              f"{total} warp-instructions")
        for lab, (n, wf, ideal) in sorted(agg.items(), key=lambda kv: -kv[1][0]):
            bank = f"{wf / ideal:5.2f}" if ideal else '    -'
            print(f"  {lab:16s} {n:10d}  {100 * n / total:5.1f}%   bank {bank}")


if __name__ == '__main__':
    main()
