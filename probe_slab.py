import sys, time, ctypes
import cupy as cp, numpy as np, torch
sys.path.insert(0, '.')
from cupy_backends.cuda.libs import cublas
print("cupy", cp.__version__, "cuda", cp.cuda.runtime.runtimeGetVersion(), "torch", torch.__version__)
print("before create", sorted({l.split()[-1] for l in open('/proc/self/maps') if 'cublas' in l}))
from sharekan.lutham.blas import Blas
s = cp.cuda.Stream(non_blocking=True)
wsb = cp.empty(8 << 20, cp.uint8)
blas = Blas(s.ptr, wsb.data.ptr, 8 << 20)
M, N, K = 1024, 3136, 7168
W = cp.random.rand(M * K).astype(cp.float16); B = cp.random.rand(N * K).astype(cp.float16); Y = cp.zeros(M * N, cp.float32)
def gemm(n=N, k=K): blas.gemm_nt(n, M, k, B.data.ptr, W.data.ptr, Y.data.ptr, False)
def t(fn, n=20):
    fn(); s.synchronize()
    a, b = cp.cuda.Event(), cp.cuda.Event()
    a.record(s)
    for _ in range(n): fn()
    b.record(s); b.synchronize(); return cp.cuda.get_elapsed_time(a, b) * 1000 / n
for n, k in ((3136, 7168), (3136, 2240), (392, 7168), (49, 7168), (49, 29344 // 8 * 8)):
    us = t(lambda: gemm(n, k)); print(f"gemm m=1024 n={n} k={k}: {us:.1f} µs, {2*M*n*k/us/1e6:.0f} TFLOP/s")
Wt = torch.as_tensor(W.reshape(M, K)); Bt = torch.as_tensor(B.reshape(N, K))
ref = (Bt.float() @ Wt.float().T); gemm(); s.synchronize()
print("gemm max rel err vs torch fp32", float((torch.as_tensor(Y.reshape(N, M)) - ref).abs().max() / ref.abs().max()))
try:
    s.begin_capture()
    with s: gemm()
    g = s.end_capture(); g.launch(s); s.synchronize(); print("capture OK")
except Exception as e:
    print("capture failed", repr(e))
# the slab kernel alone, large head layer 1
from sharekan.kan import KAN
from sharekan.vq_kan import VQKAN, encode_layer
from sharekan.lutham.runtime import LuthamHead
from sharekan.lutham.geometry import slab_launches, slab_slots, BLAS_BYTES
torch.manual_seed(0)
kan = KAN([12544, 1024, 1024], grid_size=10).cuda()
cb = torch.nn.functional.normalize(torch.randn(65536, 13, device="cuda"), dim=1)
vq = VQKAN([encode_layer(l, cb, "fp16") for l in kan.layers]).eval()
for rows, prec in ((49, "low"), (392, "low"), (3136, "low"), (392, "high"), (3136, "high")):
    head = LuthamHead(vq, max_rows=rows, precision=prec, slab_from=2)
    print(rows, prec, "graphs", head.use_graphs, head.graph_error)
    x = cp.asarray(torch.rand(rows, 12544, device="cuda") * 2 - 1)
    head.forward(x); head.stream.synchronize()
    print(rows, prec, "graphs after first", head.use_graphs, head.graph_error)
    a, b = cp.cuda.Event(), cp.cuda.Event()
    for _ in range(3):
        a.record(head.stream); head.forward(x); b.record(head.stream); b.synchronize()
    print(rows, prec, "forward µs", cp.cuda.get_elapsed_time(a, b) * 1000)
    lay = head.plan.layers[0]
    ws_ = head.view("workspace")[:-BLAS_BYTES]
    sl = slab_launches(rows, 12544, 1024, head.products, 13, ws_.nbytes)
    i0, n_pad, wblocks, grid, b_off = sl[0]
    consts = (head.view("L0.t0"), head.view("L0.h"), np.int32(lay.n_knots), np.int32(13), head.view("codebook"),
              np.int32(head.view("codebook").shape[1]), head.view("L0.edges"), head.view("L0.scales"))
    k = head.kernels[f"lutham_slab_p{head.products}"]
    args = (head.view("act0"), np.int32(rows), np.int32(12544), np.int32(1024), np.int32(0), np.int32(n_pad), np.int32(14), *consts, ws_[:b_off], ws_[b_off:], np.int32(wblocks))
    with head.stream:
        a.record(head.stream)
        for _ in range(10): k(grid, (256,), args)
        b.record(head.stream); b.synchronize()
    print(rows, prec, "slabs", len(sl), "n_pad", n_pad, "slab kernel µs", cp.cuda.get_elapsed_time(a, b) * 100,
          "bytes written", (1024 + rows) * head.products * n_pad * 14 * 2)
    del head
