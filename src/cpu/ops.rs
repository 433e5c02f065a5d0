//! Element-wise pieces of the forward pass: RMSNorm, gated activations, soft-capping, softmax.

use crate::model::recipe::Activation;

/// `out = x / rms(x) * weight`, row by row (rows of `weight.len()` values).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let scale = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// `gate = act(gate) * up`, in place.
pub fn glu(act: Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        Activation::Silu => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        }
        Activation::GeluTanh => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = gelu_tanh(*g) * u;
            }
        }
    }
}

/// GELU's tanh approximation, computed as PyTorch does in f32.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// `cap · tanh(x / cap)` of every value: squashes scores smoothly into (-cap, cap).
pub fn softcap(x: &mut [f32], cap: f32) {
    x.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_constant_row_is_weight() {
        let mut out = [0f32; 4];
        rms_norm(&[3.0; 4], &[1.0, 2.0, 3.0, 4.0], 0.0, &mut out);
        for (o, w) in out.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!((o - w).abs() < 1e-6);
        }
    }

    #[test]
    fn gelu_tanh_matches_known_values() {
        // torch.nn.functional.gelu(x, approximate="tanh") in float32
        let cases = [
            (-3.0, -0.003_637_433),
            (-0.5, -0.154_286),
            (0.0, 0.0),
            (1.0, 0.841_192),
            (4.0, 3.999_93),
        ];
        for (x, want) in cases {
            assert!(
                (gelu_tanh(x) - want).abs() < 1e-6,
                "gelu({x}) = {}",
                gelu_tanh(x)
            );
        }
    }

    #[test]
    fn softcap_bounds_and_keeps_small_values() {
        let mut v = [0.01, -1e6, 1e6, f32::MAX];
        softcap(&mut v, 30.0);
        assert!((v[0] - 0.01).abs() < 1e-6);
        assert_eq!([v[1], v[2], v[3]], [-30.0, 30.0, 30.0]);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut v = [1.0, 2.0, 3.0, -1000.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v[3] == 0.0 && v[2] > v[1]);
    }
}
