//! The kernels as burn ops, for any backend: fused on `Flex` and `Autodiff<Flex>`, burn's
//! own composed ops elsewhere.
//!
//! Dispatch is by type: a generic `Tensor<B, D>` is checked against the two CPU tensor types
//! with `Any` (safe downcasting, one small allocation per call), so model code stays generic
//! over `B: Backend` and needs no extra trait bound.

use std::any::Any;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{activation, DType, TensorPrimitive};
use burn_flex::FlexTensor;

use crate::cpu;

type FlexAd = Autodiff<Flex>;
type AdPrimitive = burn::tensor::ops::FloatTensor<FlexAd>;

/// `a` as a `T` when `A` and `T` are the same type.
fn same<A: 'static, T: 'static>(a: A) -> Result<T, A> {
    let boxed: Box<dyn Any> = Box::new(a);
    match boxed.downcast::<T>() {
        Ok(t) => Ok(*t),
        Err(boxed) => Err(*boxed.downcast::<A>().expect("the box holds an A")),
    }
}

/// The input of a kernel: f32, contiguous (copied when it is a strided view).
fn contiguous_f32(x: &FlexTensor) -> Option<FlexTensor> {
    (x.dtype() == DType::F32).then(|| {
        if x.as_slice::<f32>().is_some() {
            x.clone()
        } else {
            x.to_contiguous()
        }
    })
}

fn slice(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().expect("contiguous f32")
}

/// A new f32 tensor of `like`'s shape filled by `f`.
fn fill_like(like: &FlexTensor, f: impl FnOnce(&mut [f32])) -> FlexTensor {
    fill_shape(like.layout().shape().clone(), f)
}

fn last_dim(x: &FlexTensor) -> usize {
    let shape = x.layout().shape();
    shape[shape.num_dims() - 1]
}

fn flex_silu(x: &FlexTensor) -> FlexTensor {
    fill_like(x, |o| cpu::silu_forward(slice(x), o))
}

fn flex_softmax(x: &FlexTensor) -> FlexTensor {
    fill_like(x, |o| cpu::softmax_forward(slice(x), o, last_dim(x)))
}

/// What a fused op's backward keeps from its forward.
#[derive(Clone, Copy, Debug)]
enum Keep {
    Input,
    Output,
    Nothing,
}

/// A fused op's backward: the gradient from what was kept, the incoming (contiguous) gradient
/// and the op's dimensions.
type GradFn = fn(Option<&FlexTensor>, &FlexTensor, [usize; 4]) -> FlexTensor;

/// One custom autodiff op for every kernel: forward computed by the caller, backward by `grad`.
#[derive(Debug)]
struct Fused {
    grad: GradFn,
}

impl Backward<Flex, 1> for Fused {
    type State = (Option<FlexTensor>, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (kept, dims) = ops.state;
        let grad = self.grad;
        unary::<Flex, _>(ops.parents, ops.node, grads, |g: FlexTensor| {
            grad(
                kept.as_ref(),
                &contiguous_f32(&g).expect("f32 gradient"),
                dims,
            )
        });
    }
}

/// Runs `forward` on an `Autodiff<Flex>` tensor as a tracked op with backward `grad`; the
/// input comes back (`Err`) when it is not f32.
fn fused_ad(
    x: AdPrimitive,
    forward: &dyn Fn(&FlexTensor) -> FlexTensor,
    keep: Keep,
    dims: [usize; 4],
    grad: GradFn,
) -> Result<AdPrimitive, AdPrimitive> {
    let Some(input) = contiguous_f32(&x.primitive) else {
        return Err(x);
    };
    let out = forward(&input);
    Ok(
        match (Fused { grad })
            .prepare::<NoCheckpointing>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let kept = match keep {
                    Keep::Input => Some(input),
                    Keep::Output => Some(out.clone()),
                    Keep::Nothing => None,
                };
                prep.finish((kept, dims), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
    )
}

fn kept(k: Option<&FlexTensor>) -> &FlexTensor {
    k.expect("the op kept a tensor")
}

/// SiLU: the backward keeps the input.
fn ad_silu(x: AdPrimitive) -> Result<AdPrimitive, AdPrimitive> {
    fused_ad(x, &flex_silu, Keep::Input, [0; 4], |x, g, _| {
        let x = kept(x);
        fill_like(x, |o| cpu::silu_backward(slice(x), slice(g), o))
    })
}

/// Softmax: the backward keeps the output.
fn ad_softmax(x: AdPrimitive) -> Result<AdPrimitive, AdPrimitive> {
    fused_ad(x, &flex_softmax, Keep::Output, [0; 4], |y, g, _| {
        let y = kept(y);
        fill_like(y, |o| {
            cpu::softmax_backward(slice(y), slice(g), o, last_dim(y))
        })
    })
}

/// False when `BLOCKDIFF_KERNELS=0` (or `off`) is set: every op then runs burn's own
/// composition, for A/B timing and for ruling the kernels out when debugging numerics.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("BLOCKDIFF_KERNELS").as_deref(),
            Ok("0") | Ok("off") | Ok("false")
        )
    })
}

/// Runs `flex` on a `Flex` tensor or `ad` on an `Autodiff<Flex>` one; the input is given
/// back (`Err`) for other backends, other dtypes, a `None` kernel, or with kernels off.
fn dispatch<B: Backend, const DI: usize, const DO: usize>(
    x: Tensor<B, DI>,
    flex: Option<&dyn Fn(&FlexTensor) -> FlexTensor>,
    ad: &dyn Fn(AdPrimitive) -> Result<AdPrimitive, AdPrimitive>,
) -> Result<Tensor<B, DO>, Tensor<B, DI>> {
    if !enabled() {
        return Err(x);
    }
    let x = match same::<_, Tensor<Flex, DI>>(x) {
        Ok(t) => {
            let give_back = |t: Tensor<Flex, DI>| same(t).ok().expect("B is Flex");
            let Some(flex) = flex else {
                return Err(give_back(t));
            };
            let p = t.into_primitive().tensor();
            return match contiguous_f32(&p) {
                Some(c) => {
                    let y = Tensor::<Flex, DO>::from_primitive(TensorPrimitive::Float(flex(&c)));
                    Ok(same(y).ok().expect("B is Flex"))
                }
                None => Err(give_back(Tensor::from_primitive(TensorPrimitive::Float(p)))),
            };
        }
        Err(x) => x,
    };
    match same::<_, Tensor<FlexAd, DI>>(x) {
        Ok(t) => match ad(t.into_primitive().tensor()) {
            Ok(p) => {
                let y = Tensor::<FlexAd, DO>::from_primitive(TensorPrimitive::Float(p));
                Ok(same(y).ok().expect("B is Autodiff<Flex>"))
            }
            Err(p) => {
                let t = Tensor::<FlexAd, DI>::from_primitive(TensorPrimitive::Float(p));
                Err(same(t).ok().expect("B is Autodiff<Flex>"))
            }
        },
        Err(x) => Err(x),
    }
}

/// A new f32 tensor of `shape`, filled by `f`.
fn fill_shape(shape: impl Into<burn::tensor::Shape>, f: impl FnOnce(&mut [f32])) -> FlexTensor {
    let mut out = FlexTensor::empty(shape.into(), DType::F32);
    f(out.storage_mut::<f32>());
    out
}

fn split_flex(x: &FlexTensor, [b, n, h, dh]: [usize; 4]) -> FlexTensor {
    fill_shape([b, h, n, dh], |o| {
        cpu::swap_middle_axes(slice(x), o, [b, n, h, dh])
    })
}

fn merge_flex(x: &FlexTensor, [b, n, h, dh]: [usize; 4]) -> FlexTensor {
    fill_shape([b, n, h * dh], |o| {
        cpu::swap_middle_axes(slice(x), o, [b, h, n, dh])
    })
}

/// `[b, n, h·dh] → [b, h, n, dh]` (attention's head-major layout). On `Flex` this is the
/// zero-copy strided view (the matmuls read strides as they are, and inference then keeps no
/// copy); on `Autodiff<Flex>` a contiguous copy whose backward merges rows back in one pass —
/// burn's view makes the backward re-materialise each gradient through a per-element strided
/// copy (three per layer and step). Elsewhere: reshape + swap.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, n, d] = x.dims();
    assert!(
        heads > 0 && d % heads == 0,
        "split_heads: {d} is not {heads} heads"
    );
    let dims = [b, n, heads, d / heads];
    let ad = |x: AdPrimitive| {
        fused_ad(
            x,
            &|x| split_flex(x, dims),
            Keep::Nothing,
            dims,
            |_, g, dims| merge_flex(g, dims),
        )
    };
    dispatch::<B, 3, 4>(x, None, &ad)
        .unwrap_or_else(|x| x.reshape([b, n, heads, d / heads]).swap_dims(1, 2))
}

/// `[b, h, n, dh] → [b, n, h·dh]` (attention output back to the model width), copied by
/// whole rows on the CPU backends (burn's swap + reshape copies element by element).
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, n, dh] = x.dims();
    let dims = [b, n, h, dh];
    let flex = move |x: &FlexTensor| merge_flex(x, dims);
    let ad = |x: AdPrimitive| {
        fused_ad(x, &flex, Keep::Nothing, dims, |_, g, dims| {
            split_flex(g, dims)
        })
    };
    dispatch::<B, 4, 3>(x, Some(&flex), &ad)
        .unwrap_or_else(|x| x.swap_dims(1, 2).reshape([b, n, h * dh]))
}

/// SiLU `x · σ(x)`: fused on the CPU backends, [`activation::silu`] elsewhere.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    dispatch::<B, D, D>(x, Some(&flex_silu), &ad_silu).unwrap_or_else(activation::silu)
}

/// Softmax along `dim`: fused on the CPU backends when `dim` is the last one,
/// [`activation::softmax`] otherwise.
pub fn softmax<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    if dim + 1 != D {
        return activation::softmax(x, dim);
    }
    dispatch::<B, D, D>(x, Some(&flex_softmax), &ad_softmax)
        .unwrap_or_else(|x| activation::softmax(x, dim))
}

/// `t` as a contiguous f32 `Flex` tensor, when `B` is `Flex`.
fn flex_f32<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    let t = same::<_, Tensor<Flex, D>>(t.clone()).ok()?;
    contiguous_f32(&t.into_primitive().tensor())
}

/// Attention of position-major queries `q` (`[b, nq, h·dh]`, rotated) over keys and values
/// given as position-major runs `[b, m, h, dh]` in order (a KV cache, then the call's own),
/// with an optional additive `bias` `[1, nq·nk]` (`0` / `−∞`); returns the heads merged,
/// `[b, nq, h·dh]`.
///
/// On `Flex` this is [`cpu::attention_forward`]: the runs are read in place, without the
/// copy of the cache that concatenating it would make. `None` on other backends (CUDA, and
/// `Autodiff<Flex>`: training never attends to a cache) and with kernels off; the caller then
/// composes burn's ops.
pub fn cached_attention<B: Backend>(
    q: &Tensor<B, 3>,
    heads: usize,
    runs: &[(&Tensor<B, 4>, &Tensor<B, 4>)],
    bias: Option<&Tensor<B, 2>>,
) -> Option<Tensor<B, 3>> {
    if !enabled() {
        return None;
    }
    let [b, nq, d] = q.dims();
    if heads == 0 || d % heads != 0 {
        return None;
    }
    let dh = d / heads;
    let qf = flex_f32(q)?;
    let mut kv = Vec::with_capacity(runs.len());
    for (k, v) in runs {
        let [kb, len, kh, kd] = k.dims();
        if [kb, kh, kd] != [b, heads, dh] || v.dims() != k.dims() {
            return None;
        }
        kv.push((flex_f32(*k)?, flex_f32(*v)?, len));
    }
    let bias = match bias {
        Some(x) => Some(flex_f32(x)?),
        None => None,
    };
    let kv_runs: Vec<cpu::KvRun<'_>> = kv
        .iter()
        .map(|(k, v, len)| cpu::KvRun {
            k: slice(k),
            v: slice(v),
            len: *len,
        })
        .collect();
    let dims = [b, nq, heads, dh];
    let head_major = fill_shape([b, heads, nq, dh], |o| {
        cpu::attention_forward(slice(&qf), &kv_runs, bias.as_ref().map(slice), o, dims)
    });
    let out = merge_flex(&head_major, dims);
    let out = Tensor::<Flex, 3>::from_primitive(TensorPrimitive::Float(out));
    same(out).ok()
}

/// Rotary embedding "rotate half" of `x` (`[b, n, h·dh]`, heads side by side):
/// `x·cos + rotate_half(x)·sin` per head, with `rotate_half([x₁, x₂]) = [−x₂, x₁]` and the
/// tables given as `[1, n·h·dh]` rows (one entry per element of a sample). `None` unless `B`
/// is `Flex` (the caller composes burn's ops): one pass instead of a matmul by the signed
/// permutation, two products and a sum, each a tensor of its own.
pub fn rope_rotate<B: Backend>(
    x: &Tensor<B, 3>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
    head_dim: usize,
) -> Option<Tensor<B, 3>> {
    let [b, n, d] = x.dims();
    if !enabled() || head_dim == 0 || head_dim % 2 != 0 || d % head_dim != 0 {
        return None;
    }
    if cos.dims() != [1, n * d] || sin.dims() != [1, n * d] {
        return None;
    }
    let (xf, cf, sf) = (flex_f32(x)?, flex_f32(cos)?, flex_f32(sin)?);
    let out = fill_shape([b, n, d], |o| {
        cpu::rope_forward(slice(&xf), slice(&cf), slice(&sf), o, head_dim)
    });
    same(Tensor::<Flex, 3>::from_primitive(TensorPrimitive::Float(
        out,
    )))
    .ok()
}
