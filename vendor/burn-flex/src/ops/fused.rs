//! Fused inference convolutions (lookalike): a convolution, its bias, then a residual added
//! and a clamp (ReLU: `[0, ∞)`, ReLU6: `[0, 6]`) applied to each output element while its tile
//! is still in cache, instead of one pass over the whole activation for each of them.
//!
//! `out = clamp(conv(x, w) + bias + residual, lo, hi)`: the residual first, then the clamp,
//! which covers both the inverted residual (its projection has no activation, then the
//! shortcut) and ResNet's basic block (`relu(bn(conv(x)) + shortcut)`). The clamp keeps NaN
//! (`v < lo` and `v > hi` are both false for it), as `relu` then `clamp_max` do.
//!
//! The f32 depthwise and dense kernels (`depthwise.rs`, `dense.rs`) apply the epilogue where
//! they write their output; any other convolution runs as `conv2d`, `add` and `clamp`.

use burn_backend::DType;
use burn_backend::ops::{ConvOptions, FloatTensorOps, ModuleOps};

use crate::{Flex, FlexTensor};

use super::conv_backward;
use super::dense;
use super::expand_depthwise;

/// What a fused convolution does to each output element after its bias.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Added element by element: the whole output's shape, contiguous.
    pub residual: Option<&'a [f32]>,
    /// `(lo, hi)`: values below `lo` become `lo`, above `hi` become `hi`, NaN stays.
    pub clamp: Option<(f32, f32)>,
}

impl Epilogue<'_> {
    /// Nothing to do.
    pub fn is_identity(&self) -> bool {
        self.residual.is_none() && self.clamp.is_none()
    }

    /// In place over `out`, whose first element is the output's element `at`.
    pub fn apply(&self, out: &mut [f32], at: usize) {
        match (self.residual, self.clamp) {
            (None, None) => {}
            (Some(r), None) => add(out, &r[at..at + out.len()]),
            (None, Some((lo, hi))) => clamp_all(out, lo, hi),
            (Some(r), Some((lo, hi))) => add_clamp(out, &r[at..at + out.len()], lo, hi),
        }
    }
}

#[inline(always)]
fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

#[cfg_attr(feature = "simd", macerator::with_simd)]
fn add<#[cfg(feature = "simd")] S: macerator::Simd>(out: &mut [f32], r: &[f32]) {
    for (o, r) in out.iter_mut().zip(r) {
        *o += *r;
    }
}

#[cfg_attr(feature = "simd", macerator::with_simd)]
fn clamp_all<#[cfg(feature = "simd")] S: macerator::Simd>(out: &mut [f32], lo: f32, hi: f32) {
    for o in out.iter_mut() {
        *o = clamp(*o, lo, hi);
    }
}

#[cfg_attr(feature = "simd", macerator::with_simd)]
fn add_clamp<#[cfg(feature = "simd")] S: macerator::Simd>(
    out: &mut [f32],
    r: &[f32],
    lo: f32,
    hi: f32,
) {
    for (o, r) in out.iter_mut().zip(r) {
        *o = clamp(*o + *r, lo, hi);
    }
}

/// `clamp(conv2d(x, weight, bias) + residual, lo, hi)` in one pass over the output where the
/// f32 kernels take the convolution; `residual` (the output's shape) and `clamp` are optional.
/// For inference: there is no backward pass.
pub fn conv2d_fused(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: ConvOptions<2>,
    residual: Option<FlexTensor>,
    clamp: Option<(f32, f32)>,
) -> FlexTensor {
    let fused_residual = residual
        .as_ref()
        .is_none_or(|r| r.dtype() == DType::F32 && r.layout().num_dims() == 4);
    let depthwise = conv_backward::is_depthwise_f32(&x, &weight, bias.as_ref(), &options);
    if fused_residual && (depthwise || dense::applies(&x, &weight, bias.as_ref(), options.groups)) {
        if let Some(r) = &residual {
            let (xs, ws) = (x.layout().shape(), weight.layout().shape());
            let g = conv_backward::geometry(xs, ws, &options, None);
            let out = [xs[0], ws[0], g.out_h, g.out_w];
            assert_eq!(
                r.layout().shape().dims::<4>(),
                out,
                "conv2d_fused: the residual's shape must be the output's"
            );
        }
        let residual = residual.map(|r| r.to_contiguous());
        let epilogue = Epilogue {
            residual: residual.as_ref().map(|r| r.storage()),
            clamp,
        };
        return if depthwise {
            conv_backward::depthwise_conv2d_with(x, weight, bias, &options, &epilogue)
        } else {
            dense::conv2d_with(x, weight, bias, &options, &epilogue)
        };
    }
    let mut y = Flex::conv2d(x, weight, bias, options);
    if let Some(r) = residual {
        y = Flex::float_add(y, r);
    }
    if let Some((lo, hi)) = clamp {
        y = Flex::float_clamp(y, lo.into(), hi.into());
    }
    y
}

/// One of [`inverted_residual_fused`]'s convolutions: weight, bias, and the clamp after them.
pub struct ConvStep {
    pub weight: FlexTensor,
    pub bias: FlexTensor,
    pub clamp: Option<(f32, f32)>,
}

/// An inverted residual, for inference: `clamp3(project(clamp2(depthwise(clamp1(expand(x) +
/// b1)) + b2)) + b3 [+ x])`, where `expand` and `project` are 1×1 convolutions (stride 1, no
/// padding) and `depthwise` one over the expanded channels with `options`; the block's input is
/// added where `residual` says (it must then have the output's shape). In bands of rows that
/// keep the expanded activation and the depthwise's output in cache (`expand_depthwise.rs`)
/// where the f32 kernels take it and the bands pay; otherwise the three fused convolutions one
/// after the other, with the same result to rounding.
pub fn inverted_residual_fused(
    x: FlexTensor,
    expand: ConvStep,
    depthwise: ConvStep,
    options: ConvOptions<2>,
    project: ConvStep,
    residual: bool,
) -> FlexTensor {
    let (xs, es, ps) = (
        x.layout().shape().clone(),
        expand.weight.layout().shape().clone(),
        project.weight.layout().shape().clone(),
    );
    let expanded = es[0];
    let pointwise = |w: &FlexTensor, b: &FlexTensor, cin: usize| {
        let s = w.layout().shape();
        conv_backward::all_f32_4d(&[w])
            && s[1] == cin
            && s[2] == 1
            && s[3] == 1
            && b.dtype() == DType::F32
            && b.layout().num_elements() == s[0]
    };
    let (dw, db) = (&depthwise.weight, &depthwise.bias);
    if conv_backward::all_f32_4d(&[&x])
        && pointwise(&expand.weight, &expand.bias, xs[1])
        && pointwise(&project.weight, &project.bias, expanded)
        && db.dtype() == DType::F32
        && db.layout().num_elements() == expanded
        && conv_backward::all_f32_4d(&[dw])
        && options.groups == expanded
        && expanded > 1
        && dw.layout().shape()[..2] == [expanded, 1]
    {
        let ds = dw.layout().shape();
        let g = super::depthwise::Geometry::of_conv([xs[2], xs[3]], [ds[2], ds[3]], &options);
        assert!(
            !residual || [xs[1], xs[2], xs[3]] == [ps[0], g.out_h, g.out_w],
            "inverted_residual_fused: the residual's shape must be the output's"
        );
        let x = x.to_contiguous();
        let [(ew, eb), (dw, db), (pw, pb)] = [&expand, &depthwise, &project]
            .map(|c| (c.weight.to_contiguous(), c.bias.to_contiguous()));
        let projection = expand_depthwise::Projection {
            weight: pw.storage(),
            bias: pb.storage(),
            clamp: project.clamp,
            channels_out: ps[0],
            residual,
        };
        if let Some(y) = expand_depthwise::forward(
            x.storage(),
            (ew.storage(), eb.storage(), expand.clamp),
            (dw.storage(), db.storage(), depthwise.clamp),
            &projection,
            xs[0],
            xs[1],
            expanded,
            &g,
        ) {
            return super::planes::f32_tensor(y, &[xs[0], ps[0], g.out_h, g.out_w]);
        }
    }
    let one = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    let shortcut = residual.then(|| x.clone());
    let y = conv2d_fused(x, expand.weight, Some(expand.bias), one.clone(), None, expand.clamp);
    let y = conv2d_fused(y, depthwise.weight, Some(depthwise.bias), options, None, depthwise.clamp);
    conv2d_fused(y, project.weight, Some(project.bias), one, shortcut, project.clamp)
}
