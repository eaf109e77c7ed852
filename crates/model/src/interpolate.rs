//! Weight-space interpolation between two modules of the same structure: WiSE-FT's blend of
//! fine-tuned and pretrained weights (Wortsman et al., "Robust fine-tuning of zero-shot
//! models", CVPR 2022), one network at no inference cost.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// Collects every float parameter's value in visiting order.
struct Collect(Vec<TensorData>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().into_data());
    }
}

/// Replaces every float parameter `w` by `alpha · w + (1 − alpha) · other`, taking `other`
/// in the same visiting order.
struct Blend {
    others: std::vec::IntoIter<TensorData>,
    alpha: f64,
    mismatch: Option<String>,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(other) = self.others.next() else {
            self.mismatch
                .get_or_insert_with(|| "the second module has fewer parameters".into());
            return param;
        };
        let alpha = self.alpha;
        let mut mismatch = None;
        let blended = param.map(|w| {
            if w.dims().as_slice() != other.shape().as_slice() {
                mismatch = Some(format!(
                    "parameter shapes differ: {:?} and {:?}",
                    w.dims(),
                    other.shape()
                ));
                return w;
            }
            let o = Tensor::<D>::from_data(other, &w.device());
            w.mul_scalar(alpha) + o.mul_scalar(1.0 - alpha)
        });
        if let Some(m) = mismatch {
            self.mismatch.get_or_insert(m);
        }
        blended
    }
}

/// `alpha · module + (1 − alpha) · other`, parameter by parameter (running statistics and
/// flags are `module`'s). `alpha = 1` is `module`, `alpha = 0` is `other`'s weights. Fails
/// when the two do not have the same parameters.
pub fn interpolate<M: Module>(module: M, other: &M, alpha: f64) -> anyhow::Result<M> {
    let mut collect = Collect(Vec::new());
    other.visit(&mut collect);
    let count = collect.0.len();
    let mut blend = Blend {
        others: collect.0.into_iter(),
        alpha,
        mismatch: None,
    };
    let out = module.map(&mut blend);
    if blend.others.len() > 0 {
        blend
            .mismatch
            .get_or_insert_with(|| format!("the second module has {count} parameters, more"));
    }
    match blend.mismatch {
        Some(m) => anyhow::bail!("cannot interpolate: {m}"),
        None => Ok(out),
    }
}

/// The uniform mean of `modules`, parameter by parameter (a model soup; running statistics
/// and flags are the first module's). Fails when they do not all have the same parameters.
pub fn average<M: Module + Clone>(modules: &[M]) -> anyhow::Result<M> {
    let Some(first) = modules.first() else {
        anyhow::bail!("cannot average no modules");
    };
    let mut mean = first.clone();
    for (i, next) in modules.iter().enumerate().skip(1) {
        // The running mean of i + 1 modules: i/(i+1) of the mean so far, 1/(i+1) of the next.
        let kept = i as f64 / (i + 1) as f64;
        mean = interpolate(mean, next, kept)?;
    }
    Ok(mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    fn values(l: &Linear) -> Vec<f32> {
        l.weight.val().into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn average_is_the_mean_of_every_module() {
        let device = crate::device::device("cpu").unwrap();
        let layers: Vec<Linear> = (0..3)
            .map(|_| LinearConfig::new(3, 2).init(&device))
            .collect();
        let mean = average(&layers).unwrap();
        let each: Vec<Vec<f32>> = layers.iter().map(values).collect();
        for (i, got) in values(&mean).into_iter().enumerate() {
            let want = (each[0][i] + each[1][i] + each[2][i]) / 3.0;
            assert!((got - want).abs() < 1e-6, "{got} against {want}");
        }
        assert!(average::<Linear>(&[]).is_err());
        let wider = LinearConfig::new(4, 2).init(&device);
        assert!(average(&[layers[0].clone(), wider]).is_err());
    }

    #[test]
    fn blends_parameter_by_parameter() {
        let device = crate::device::device("cpu").unwrap();
        let a = LinearConfig::new(3, 2).init(&device);
        let b = LinearConfig::new(3, 2).init(&device);
        let (va, vb) = (values(&a), values(&b));
        let mid = interpolate(a.clone(), &b, 0.25).unwrap();
        for ((m, x), y) in values(&mid).iter().zip(&va).zip(&vb) {
            assert!((m - (0.25 * x + 0.75 * y)).abs() < 1e-6);
        }
        assert_eq!(values(&interpolate(a.clone(), &b, 1.0).unwrap()), va);
        let other_shape = LinearConfig::new(4, 2).init(&device);
        assert!(interpolate(a, &other_shape, 0.5).is_err());
    }
}
