// 'SAME' stride-1 2-D convolutions through oneDNN, as XLA FFI handlers (CPU).
//
// Built and registered by confusion_embeddings/cnn/onednn.py, which documents the calls:
//   OnednnConvFwd(x[N,H,W,C], w[KH,KW,C,K])        -> y[N,H,W,K]
//   OnednnConvBwdData(dy[N,H,W,K], w[KH,KW,C,K])   -> dx[N,H,W,C]
//   OnednnConvBwdWeights(x[N,H,W,C], dy[N,H,W,K])  -> dw[KH,KW,C,K]
// each with an int64 attribute `threads`: the OpenMP threads oneDNN may use for the call.
// Activations contiguous NHWC, stride 1, padding kernel/2 each side. All float32, or, in the
// *Bf16 variants, bfloat16 activations (x, y, dx, dy) with float32 kernels w and dw: oneDNN
// converts w to bfloat16 while reordering it, accumulates in float32 and writes dw in float32.
//
// Activations stay in XLA's NHWC layout (oneDNN's nhwc); only the kernel is reordered into
// the layout the primitive prefers, which is small. Primitives (oneDNN JIT-compiles each
// one) are created once per shape (see Pool) and kept for the process's life.
#include <omp.h>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>
#include <memory>
#include <tuple>
#include <string>
#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

enum Kind { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };
// (kind, bf16, n, h, w, c, k, kh, kw, threads): a primitive splits its work for the OpenMP
// thread count in force when it is created, so the count is part of what it is.
using Key = std::tuple<int, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t>;

dnnl::engine& engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

struct Entry {
  dnnl::primitive prim;
  memory::desc w_user, w_prim;  // the caller's HWIO kernel, and the primitive's own layout
  memory scratch, w_buf;        // the primitive's scratchpad; the kernel in its layout
  bool reorder_w = false;
  dnnl::reorder w_reorder;
  dnnl::stream strm;
};

Entry make(int kind, bool bf16, int64_t n, int64_t h, int64_t w, int64_t c, int64_t k,
           int64_t kh, int64_t kw) {
  auto& eng = engine();
  memory::dims src_d{n, c, h, w}, dst_d{n, k, h, w}, wei_d{k, c, kh, kw};
  memory::dims strides{1, 1}, pad_l{kh / 2, kw / 2}, pad_r{kh / 2, kw / 2};
  const dt act = bf16 ? dt::bf16 : dt::f32;
  auto src = memory::desc(src_d, act, tag::nhwc);
  auto dst = memory::desc(dst_d, act, tag::nhwc);
  // The primitive's weights are bf16 in bf16 mode, except the weight gradient, which oneDNN
  // can accumulate into float32 directly (no bf16 rounding of the update).
  auto wei_any = memory::desc(wei_d, act, tag::any);
  auto wei_user = memory::desc(wei_d, dt::f32, tag::hwio);
  dnnl::primitive_attr attr;
  // A scratchpad owned by the cached entry: no allocation per call.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // The backward primitives take the forward one as a hint of the layouts to use. (The
  // forward call itself can be an inference primitive: it has no bias or fused activation,
  // so training and inference compute the same thing.)
  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      eng, kind == kFwd ? dnnl::prop_kind::forward_inference : dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, src, wei_any, dst, strides, pad_l, pad_r, attr);
  Entry e;
  e.strm = dnnl::stream(eng);
  e.w_user = wei_user;
  if (kind == kFwd) {
    e.prim = dnnl::convolution_forward(fwd_pd);
    e.w_prim = fwd_pd.weights_desc();
    e.scratch = memory(fwd_pd.scratchpad_desc(), eng);
  } else if (kind == kBwdData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src, wei_any, dst, strides, pad_l, pad_r,
        fwd_pd, attr);
    e.prim = dnnl::convolution_backward_data(pd);
    e.w_prim = pd.weights_desc();
    e.scratch = memory(pd.scratchpad_desc(), eng);
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src,
        memory::desc(wei_d, dt::f32, tag::any), dst, strides, pad_l, pad_r, fwd_pd, attr);
    e.prim = dnnl::convolution_backward_weights(pd);
    e.w_prim = pd.diff_weights_desc();
    e.scratch = memory(pd.scratchpad_desc(), eng);
  }
  e.reorder_w = e.w_prim != e.w_user;
  if (e.reorder_w) {
    e.w_buf = memory(e.w_prim, eng);
    if (kind == kBwdWeights)
      e.w_reorder = dnnl::reorder(memory(e.w_prim, eng, nullptr), memory(e.w_user, eng, nullptr));
    else
      e.w_reorder = dnnl::reorder(memory(e.w_user, eng, nullptr), memory(e.w_prim, eng, nullptr));
  }
  return e;
}

// Entries ready for reuse, per shape. A call takes one (or makes one) and gives it back:
// two devices convolving the same shape at once each get their own scratchpad, and the
// entries number at most the calls ever in flight together, whichever of XLA's threads
// make them.
class Pool {
 public:
  std::unique_ptr<Entry> take(const Key& key) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& ready = ready_[key];
      if (!ready.empty()) {
        auto e = std::move(ready.back());
        ready.pop_back();
        return e;
      }
    }
    auto [kind, bf16, n, h, w, c, k, kh, kw, threads] = key;
    return std::make_unique<Entry>(make(kind, bf16, n, h, w, c, k, kh, kw));
  }
  void give_back(const Key& key, std::unique_ptr<Entry> e) {
    std::lock_guard<std::mutex> lock(mu_);
    ready_[key].push_back(std::move(e));
  }

 private:
  std::mutex mu_;
  std::map<Key, std::vector<std::unique_ptr<Entry>>> ready_;
};

Pool& pool() {
  static Pool p;
  return p;
}

// x_nhwc: the [n,h,w,c] side of the convolution (x, or dx for kBwdData); w_hwio: the kernel
// (dw for kBwdWeights); y_nhwk: the [n,h,w,k] side (y, or dy for both backward kinds).
ffi::Error run(int kind, bool bf16, void* x_nhwc, float* w_hwio, void* y_nhwk, int64_t n,
               int64_t h, int64_t w, int64_t c, int64_t k, int64_t kh, int64_t kw,
               int64_t threads) {
  try {
    // OpenMP's thread count belongs to the calling thread: set it for this call.
    omp_set_num_threads(static_cast<int>(threads));
    auto& eng = engine();
    Key key{kind, bf16, n, h, w, c, k, kh, kw, threads};
    std::unique_ptr<Entry> entry = pool().take(key);
    Entry& e = *entry;
    dnnl::stream& strm = e.strm;
    const dt act = bf16 ? dt::bf16 : dt::f32;
    memory x(memory::desc({n, c, h, w}, act, tag::nhwc), eng, x_nhwc);
    memory y(memory::desc({n, k, h, w}, act, tag::nhwc), eng, y_nhwk);
    memory wu(e.w_user, eng, w_hwio);
    memory wp = e.reorder_w ? e.w_buf : wu;
    if (kind == kFwd) {
      if (e.reorder_w) e.w_reorder.execute(strm, wu, wp);
      e.prim.execute(strm, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, wp}, {DNNL_ARG_DST, y},
                            {DNNL_ARG_SCRATCHPAD, e.scratch}});
    } else if (kind == kBwdData) {
      if (e.reorder_w) e.w_reorder.execute(strm, wu, wp);
      e.prim.execute(strm, {{DNNL_ARG_DIFF_DST, y}, {DNNL_ARG_WEIGHTS, wp},
                            {DNNL_ARG_DIFF_SRC, x}, {DNNL_ARG_SCRATCHPAD, e.scratch}});
    } else {
      e.prim.execute(strm, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, y},
                            {DNNL_ARG_DIFF_WEIGHTS, wp}, {DNNL_ARG_SCRATCHPAD, e.scratch}});
      if (e.reorder_w) e.w_reorder.execute(strm, wp, wu);
    }
    strm.wait();
    pool().give_back(key, std::move(entry));
    return ffi::Error::Success();
  } catch (const std::exception& err) {  // dnnl::error is one
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + err.what());
  }
}

// A: the activations' element type (F32 or BF16); kernels are float32 either way.
template <ffi::DataType A>
ffi::Error Fwd(ffi::Buffer<A> x, ffi::Buffer<ffi::F32> wt, ffi::ResultBuffer<A> y,
               int64_t threads) {
  auto xd = x.dimensions(); auto wd = wt.dimensions();
  return run(kFwd, A == ffi::BF16, x.untyped_data(), wt.typed_data(), y->untyped_data(), xd[0],
             xd[1], xd[2], xd[3], wd[3], wd[0], wd[1], threads);
}
template <ffi::DataType A>
ffi::Error BwdData(ffi::Buffer<A> g, ffi::Buffer<ffi::F32> wt, ffi::ResultBuffer<A> dx,
                   int64_t threads) {
  auto gd = g.dimensions(); auto wd = wt.dimensions();
  return run(kBwdData, A == ffi::BF16, dx->untyped_data(), wt.typed_data(), g.untyped_data(),
             gd[0], gd[1], gd[2], wd[2], wd[3], wd[0], wd[1], threads);
}
template <ffi::DataType A>
ffi::Error BwdWeights(ffi::Buffer<A> x, ffi::Buffer<A> g, ffi::ResultBuffer<ffi::F32> dw,
                      int64_t threads) {
  auto xd = x.dimensions(); auto dd = dw->dimensions();
  return run(kBwdWeights, A == ffi::BF16, x.untyped_data(), dw->typed_data(), g.untyped_data(),
             xd[0], xd[1], xd[2], xd[3], dd[3], dd[0], dd[1], threads);
}

}  // namespace

#define BIND(A, B, R) ffi::Ffi::Bind().Arg<ffi::Buffer<A>>().Arg<ffi::Buffer<B>>() \
    .Ret<ffi::Buffer<R>>().Attr<int64_t>("threads")
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd, Fwd<ffi::F32>, BIND(ffi::F32, ffi::F32, ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdData, BwdData<ffi::F32>,
                              BIND(ffi::F32, ffi::F32, ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeights, BwdWeights<ffi::F32>,
                              BIND(ffi::F32, ffi::F32, ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwdBf16, Fwd<ffi::BF16>,
                              BIND(ffi::BF16, ffi::F32, ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdDataBf16, BwdData<ffi::BF16>,
                              BIND(ffi::BF16, ffi::F32, ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwdWeightsBf16, BwdWeights<ffi::BF16>,
                              BIND(ffi::BF16, ffi::BF16, ffi::F32));
