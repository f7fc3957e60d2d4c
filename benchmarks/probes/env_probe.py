"""One-off probe of the GPU software stack facts our kernels rely on (torch 2.11 / triton 3.6 / H100)."""

import json
import time
import traceback

import torch
import torch.nn.functional as F

res = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
try:
    import triton

    res["triton"] = triton.__version__
except Exception as e:
    res["triton"] = repr(e)
dev = "cuda"
res["gpu"] = torch.cuda.get_device_name(0)
res["cap"] = torch.cuda.get_device_capability()


def t(name, fn):
    try:
        res[name] = fn()
    except Exception as e:
        res[name] = "FAIL: " + "".join(traceback.format_exception_only(e)).strip()[:400]


def scaled_mm_rowwise_bias():
    M, K, N = 4096, 1024, 3072
    a = torch.randn(M, K, device=dev).to(torch.float8_e4m3fn)
    b = torch.randn(N, K, device=dev).to(torch.float8_e4m3fn)
    sa = torch.rand(M, 1, device=dev) + 0.5
    sb = torch.rand(1, N, device=dev) + 0.5
    bias = torch.randn(N, device=dev, dtype=torch.bfloat16)
    out = torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, bias=bias, out_dtype=torch.bfloat16)
    ref = (a.float() * sa) @ (b.float() * sb.t()).t() + bias.float()
    return {"ok": True, "rel_err": float((out.float() - ref).norm() / ref.norm())}


def scaled_mm_rowwise_nobias():
    M, K, N = 4096, 1024, 3072
    a = torch.randn(M, K, device=dev).to(torch.float8_e4m3fn)
    b = torch.randn(N, K, device=dev).to(torch.float8_e4m3fn)
    sa = torch.rand(M, 1, device=dev) + 0.5
    sb = torch.rand(1, N, device=dev) + 0.5
    out = torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
    return {"ok": True, "shape": list(out.shape)}


def cudnn_sdpa():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 16, 11000, 64, device=dev, dtype=torch.bfloat16)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        F.scaled_dot_product_attention(q, q, q)
    torch.cuda.synchronize()
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            F.scaled_dot_product_attention(q, q, q)
        e.record()
        torch.cuda.synchronize()
    ms = s.elapsed_time(e) / 10
    return {"ok": True, "ms": ms, "tflops": 4 * 11000**2 * 64 * 16 / ms / 1e9}


def cudnn_sdpa_bwd():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 16, 4096, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        o = F.scaled_dot_product_attention(q, q, q)
    o.sum().backward()
    return {"ok": True}


def triton_op_compile():
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def _add1(x_ptr, o_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(o_ptr + offs, tl.load(x_ptr + offs, mask=m) + 1, mask=m)

    @triton_op("probe::add1", mutates_args={})
    def add1(x: torch.Tensor) -> torch.Tensor:
        o = torch.empty_like(x)
        n = x.numel()
        wrap_triton(_add1)[(triton.cdiv(n, 1024),)](x, o, n, BLOCK=1024)
        return o

    f = torch.compile(lambda x: add1(x * 2) * 3, fullgraph=True)
    x = torch.randn(5000, device=dev)
    return {"ok": bool(torch.allclose(f(x), (x * 2 + 1) * 3))}


def gemm_bf16():
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return {"tflops": 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12}


t("scaled_mm_rowwise_bias", scaled_mm_rowwise_bias)
t("scaled_mm_rowwise_nobias", scaled_mm_rowwise_nobias)
t("cudnn_sdpa", cudnn_sdpa)
t("cudnn_sdpa_bwd", cudnn_sdpa_bwd)
t("triton_op_compile", triton_op_compile)
t("gemm_bf16", gemm_bf16)
print(json.dumps(res, indent=1))
