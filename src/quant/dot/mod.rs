//! Dot products of weight rows with activation rows: the inner loop of every CPU matmul.
//!
//! Three paths:
//! - f32 (`matmul_f32`): exact path, weights dequantized on the fly, f32 activations, f32
//!   accumulation.
//! - Q8 (`matmul_q8`): fast path for block-quantized weights, as llama.cpp does it: activations
//!   are quantized to 8 bits per block of 32 (`Q8Acts`), each block's products are summed exactly
//!   in integers, and only the per-block scale products are floating point.
//! - Q16 (`matmul_q16`): the same with activations quantized to 16 bits per block (`Q16Acts`),
//!   which keeps large activation outliers from crushing the rest of their block.
//!
//! Kernels: a portable scalar reference (`scalar`), AVX2+FMA+F16C on x86-64 (`x86`), AVX-512
//! VNNI with rows in lanes on x86-64 (`avx512`), AMX tiles for passes over many tokens on
//! x86-64 (`amx`), NEON on aarch64, with the dot-product instruction SDOT (ARMv8.2 dotprod)
//! and the matrix multiply SMMLA (ARMv8.6 i8mm) where the CPU has them (`arm`). The best one the CPU
//! supports is chosen once (`Simd::active`); `LLMCAD_CPU_SIMD=scalar` (or `avx2`) forces a lesser
//! one.
//!
//! A dot's result depends only on its two rows, never on which other rows are computed with
//! it (tile position, batch size, row range, thread count), so batched passes (tree
//! verification, prefill) give bit-identical results to one-token passes.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod packed;
mod scalar;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::{DType, QK};
pub use packed::{matmul_packed, PackedWeights};
use std::ops::Range;
use std::sync::OnceLock;

/// A matrix of activations (rows × cols) quantized per block of 32 to integers `Q` (i8 or
/// i16): for block b of a row, `qs[b*32..]` are the values, `d[b]` the scale and
/// `s[b] = d[b]·Σq` (Q4_1 needs the sum to apply the weights' per-block minimum).
#[derive(Default)]
pub struct QActs<Q> {
    cols: usize,
    qs: Vec<Q>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// Activations quantized to 8 bits per block (scale `amax/127`).
pub type Q8Acts = QActs<i8>;
/// Activations quantized to 16 bits per block (scale `amax/32767`).
pub type Q16Acts = QActs<i16>;

/// One row of `QActs`.
#[derive(Clone, Copy)]
pub struct QRow<'a, Q> {
    pub qs: &'a [Q],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

pub type Q8Row<'a> = QRow<'a, i8>;
pub type Q16Row<'a> = QRow<'a, i16>;

/// Integer types activations are quantized to.
pub trait ActInt: Copy + Default + Into<i32> + 'static {
    /// Largest magnitude a quantized value takes.
    const QMAX: f32;
    const WIDE: bool;
    fn from_rounded(v: f32) -> Self;
}

impl ActInt for i8 {
    const QMAX: f32 = 127.0;
    const WIDE: bool = false;
    fn from_rounded(v: f32) -> Self {
        v as i8
    }
}

impl ActInt for i16 {
    const QMAX: f32 = 32767.0;
    const WIDE: bool = true;
    fn from_rounded(v: f32) -> Self {
        v as i16
    }
}

impl<Q: ActInt> QActs<Q> {
    /// Quantizes `x` (rows of `cols` values, `cols` a multiple of 32), reusing the buffers.
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        self.quantize_with(Simd::active(), x, cols)
    }

    /// As `quantize`, with the given kernels (all give bit-identical results).
    pub fn quantize_with(&mut self, simd: Simd, x: &[f32], cols: usize) {
        assert!(cols.is_multiple_of(QK) && x.len().is_multiple_of(cols.max(1)));
        self.cols = cols;
        let blocks = x.len() / QK;
        self.qs.resize(x.len(), Q::default());
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        match simd.checked() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `checked` returned these only if the CPU has AVX2 (both have); the buffers
            // were sized above
            Simd::Avx2 | Simd::Avx512Vnni | Simd::Amx => unsafe {
                let qs = self.qs.as_mut_ptr() as *mut u8;
                if Q::WIDE {
                    x86::quantize::<true>(x, qs, &mut self.d, &mut self.s)
                } else {
                    x86::quantize::<false>(x, qs, &mut self.d, &mut self.s)
                }
            },
            _ => {
                for (b, xb) in x.chunks_exact(QK).enumerate() {
                    let qs = &mut self.qs[b * QK..(b + 1) * QK];
                    let (d, sum) = scalar::quantize_block(xb, Q::QMAX, qs, Q::from_rounded);
                    self.d[b] = d;
                    self.s[b] = d * sum as f32;
                }
            }
        }
    }
}

impl<Q> QActs<Q> {
    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn rows(&self) -> usize {
        self.qs.len().checked_div(self.cols).unwrap_or(0)
    }

    pub fn row(&self, r: usize) -> QRow<'_, Q> {
        let nb = self.cols / QK;
        QRow {
            qs: &self.qs[r * self.cols..(r + 1) * self.cols],
            d: &self.d[r * nb..(r + 1) * nb],
            s: &self.s[r * nb..(r + 1) * nb],
        }
    }
}

/// Which kernels run the dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// Portable reference kernels.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX-512 (F, BW) and VNNI, besides AVX2: the AVX2 kernels for the types and
    /// paths it has no kernel for.
    Avx512Vnni,
    /// x86-64 with AMX tiles (8-bit), besides AVX-512 VNNI: tile multiplies for passes over
    /// many tokens, the AVX-512 kernels for few tokens and the types it has no kernel for.
    Amx,
    /// aarch64 NEON.
    Neon,
    /// aarch64 NEON with the ARMv8.2 dot-product instructions: SDOT for the integer sums of
    /// 8-bit activations, the NEON kernels for the rest.
    NeonDotprod,
    /// aarch64 with the ARMv8.6 int8 matrix multiply besides dotprod: SMMLA on 2×2 tiles (two
    /// weight rows, two tokens) for passes over several tokens of 8-bit activations, the
    /// dotprod kernels for the rest.
    NeonI8mm,
}

impl Simd {
    /// The fastest kernels this CPU runs.
    pub fn best() -> Simd {
        Simd::ALL
            .into_iter()
            .find(|s| s.available())
            .unwrap_or(Simd::Scalar)
    }

    /// Every kernel set, best first.
    pub const ALL: [Simd; 7] = [
        Simd::Amx,
        Simd::Avx512Vnni,
        Simd::Avx2,
        Simd::NeonI8mm,
        Simd::NeonDotprod,
        Simd::Neon,
        Simd::Scalar,
    ];

    /// The kernels in use: `best()`, unless the environment names another available set
    /// (`LLMCAD_CPU_SIMD=scalar`, `avx2`, ...). Chosen once per process.
    pub fn active() -> Simd {
        static ACTIVE: OnceLock<Simd> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let asked = std::env::var("LLMCAD_CPU_SIMD").ok();
            let named = asked.as_deref().and_then(|v| {
                Simd::ALL
                    .into_iter()
                    .find(|s| s.name().eq_ignore_ascii_case(v) && s.available())
            });
            if let (Some(v), None) = (&asked, named) {
                log::warn!(
                    "LLMCAD_CPU_SIMD={v} is not a kernel set this CPU runs; using {}",
                    Simd::best().name()
                );
            }
            named.unwrap_or_else(Simd::best)
        })
    }

    /// The kernel sets this CPU runs, best first.
    pub fn all_available() -> Vec<Simd> {
        Simd::ALL.into_iter().filter(|s| s.available()).collect()
    }

    /// Whether this CPU can run these kernels.
    pub fn available(self) -> bool {
        match self {
            Simd::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => x86::available(),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512Vnni => avx512::available(),
            #[cfg(target_arch = "x86_64")]
            Simd::Amx => amx::available(),
            #[cfg(target_arch = "aarch64")]
            Simd::Neon => true,
            #[cfg(target_arch = "aarch64")]
            Simd::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "aarch64")]
            Simd::NeonI8mm => {
                std::arch::is_aarch64_feature_detected!("dotprod")
                    && std::arch::is_aarch64_feature_detected!("i8mm")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// `self` if available, else the scalar kernels.
    fn checked(self) -> Simd {
        if self.available() {
            self
        } else {
            Simd::Scalar
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2 => "avx2",
            Simd::Avx512Vnni => "avx512vnni",
            Simd::Amx => "amx",
            Simd::Neon => "neon",
            Simd::NeonDotprod => "neon-dotprod",
            Simd::NeonI8mm => "neon-i8mm",
        }
    }
}

/// Dot product of a block-quantized weight row (any quantized type) with a Q8 activation row
/// (scalar reference).
pub fn dot_q8(dtype: DType, w: &[u8], a: Q8Row<'_>) -> f32 {
    scalar::dot_q(dtype, w, a)
}

/// As `dot_q8`, with a Q16 activation row.
pub fn dot_q16(dtype: DType, w: &[u8], a: Q16Row<'_>) -> f32 {
    scalar::dot_q(dtype, w, a)
}

/// Exact-path dot product (scalar reference): any weight type, dequantized on the fly, times
/// f32 activations.
pub fn dot_f32(dtype: DType, w: &[u8], x: &[f32]) -> f32 {
    scalar::dot_f32(dtype, w, x)
}

/// `out[t * out_stride + (r - rows.start)] = dot(W[r], A[t])` for every activation row t and
/// weight row r in `rows` (block-quantized weights, Q8 activations).
pub fn matmul_q8(
    dtype: DType,
    w: &[u8],
    cols: usize,
    rows: Range<usize>,
    acts: &Q8Acts,
    out: &mut [f32],
    out_stride: usize,
) {
    matmul_q_with(Simd::active(), dtype, w, cols, rows, acts, out, out_stride)
}

/// As `matmul_q8`, with Q16 activations.
pub fn matmul_q16(
    dtype: DType,
    w: &[u8],
    cols: usize,
    rows: Range<usize>,
    acts: &Q16Acts,
    out: &mut [f32],
    out_stride: usize,
) {
    matmul_q_with(Simd::active(), dtype, w, cols, rows, acts, out, out_stride)
}

/// As `matmul_q8`/`matmul_q16`, with the given kernels.
#[allow(clippy::too_many_arguments)]
pub fn matmul_q_with<Q: ActInt>(
    simd: Simd,
    dtype: DType,
    w: &[u8],
    cols: usize,
    rows: Range<usize>,
    acts: &QActs<Q>,
    out: &mut [f32],
    out_stride: usize,
) {
    assert!(dtype.is_quantized() && acts.cols == cols);
    match simd.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AMX and AVX-512 VNNI; the kernel checks the slice bounds it relies on
        Simd::Amx if amx::supports(dtype) => unsafe {
            amx::matmul_q(dtype, w, rows, acts, out, out_stride)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 VNNI; the kernel checks the slice bounds it relies on
        Simd::Avx512Vnni | Simd::Amx if avx512::supports(dtype) => unsafe {
            avx512::matmul_q(dtype, w, false, rows, acts, out, out_stride)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA/F16C; the kernel checks the slice bounds it relies on
        Simd::Avx2 | Simd::Avx512Vnni | Simd::Amx => unsafe {
            if Q::WIDE {
                x86::matmul_q::<true, Q>(dtype, w, rows, acts, out, out_stride)
            } else {
                x86::matmul_q::<false, Q>(dtype, w, rows, acts, out, out_stride)
            }
        },
        #[cfg(target_arch = "aarch64")]
        Simd::Neon | Simd::NeonDotprod | Simd::NeonI8mm => {
            arm::matmul_q(simd, dtype, w, rows, acts, out, out_stride)
        }
        _ => matmul_by_dots(
            w,
            dtype.row_bytes(cols),
            rows,
            acts.rows(),
            out,
            out_stride,
            |wr, t| scalar::dot_q(dtype, wr, acts.row(t)),
        ),
    }
}

/// `out[t * out_stride + (r - rows.start)] = dot(W[r], t)` for `n_t` activation rows, one dot
/// at a time (kernels without register tiles); `row_bytes`: bytes of one weight row.
fn matmul_by_dots(
    w: &[u8],
    row_bytes: usize,
    rows: Range<usize>,
    n_t: usize,
    out: &mut [f32],
    out_stride: usize,
    dot: impl Fn(&[u8], usize) -> f32,
) {
    for r in rows.clone() {
        let wr = &w[r * row_bytes..(r + 1) * row_bytes];
        for t in 0..n_t {
            out[t * out_stride + r - rows.start] = dot(wr, t);
        }
    }
}

/// As `matmul_q8`, for f32 activations `x` (rows of `cols`) and any weight type.
pub fn matmul_f32(
    dtype: DType,
    w: &[u8],
    cols: usize,
    rows: Range<usize>,
    x: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    matmul_f32_with(Simd::active(), dtype, w, cols, rows, x, out, out_stride)
}

/// As `matmul_f32`, with the given kernels.
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_with(
    simd: Simd,
    dtype: DType,
    w: &[u8],
    cols: usize,
    rows: Range<usize>,
    x: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    if cols == 0 {
        return;
    }
    match simd.checked() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2/FMA/F16C; the kernel checks the slice bounds it relies on
        Simd::Avx2 | Simd::Avx512Vnni | Simd::Amx => unsafe {
            x86::matmul_f32(dtype, w, cols, rows, x, out, out_stride)
        },
        #[cfg(target_arch = "aarch64")]
        Simd::Neon | Simd::NeonDotprod | Simd::NeonI8mm => {
            arm::matmul_f32(dtype, w, cols, rows, x, out, out_stride)
        }
        _ => matmul_by_dots(
            w,
            dtype.row_bytes(cols),
            rows,
            x.len() / cols,
            out,
            out_stride,
            |wr, t| scalar::dot_f32(dtype, wr, &x[t * cols..(t + 1) * cols]),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize_row, quantize_row};
    use super::testing::randoms;
    use super::*;

    /// Activations with outliers like SmolLM2's residual stream: a few values 1000× the rest.
    fn activations(seed: u64, n: usize) -> Vec<f32> {
        let mut x = randoms(seed, n);
        for i in (7..n).step_by(97) {
            x[i] *= 1000.0;
        }
        x
    }

    /// Every kernel set this CPU runs.
    fn simds() -> Vec<Simd> {
        Simd::all_available()
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Path {
        F32,
        Q8,
        Q16,
    }

    /// `out[t][r] = dot(W[r], x[t])` for `rows` on `path` with `simd`, rows of the output
    /// `rows.len()` long.
    fn run(
        simd: Simd,
        path: Path,
        dtype: DType,
        w: &[u8],
        cols: usize,
        rows: Range<usize>,
        x: &[f32],
    ) -> Vec<f32> {
        let n_t = x.len() / cols;
        let mut out = vec![f32::NAN; n_t * rows.len()];
        let len = rows.len();
        match path {
            Path::F32 => matmul_f32_with(simd, dtype, w, cols, rows, x, &mut out, len),
            Path::Q8 => {
                let mut a = Q8Acts::default();
                a.quantize_with(simd, x, cols);
                matmul_q_with(simd, dtype, w, cols, rows, &a, &mut out, len);
            }
            Path::Q16 => {
                let mut a = Q16Acts::default();
                a.quantize_with(simd, x, cols);
                matmul_q_with(simd, dtype, w, cols, rows, &a, &mut out, len);
            }
        }
        out
    }

    fn paths(dtype: DType) -> &'static [Path] {
        if dtype.is_quantized() {
            &[Path::F32, Path::Q8, Path::Q16]
        } else {
            &[Path::F32]
        }
    }

    fn weights(dtype: DType, seed: u64, rows: usize, cols: usize) -> Vec<u8> {
        let w = randoms(seed, rows * cols);
        let mut bytes = Vec::new();
        for r in w.chunks_exact(cols) {
            let mut b = Vec::new();
            quantize_row(dtype, r, &mut b);
            bytes.extend(b);
        }
        assert_eq!(bytes.len(), rows * dtype.row_bytes(cols), "{dtype}");
        bytes
    }

    /// `cols` for types with blocks of 32, and a multiple of 256 near it for the K types.
    fn cols_for(dtype: DType, cols: usize) -> usize {
        cols.next_multiple_of(dtype.block_len())
    }

    /// Both scalar dots against an f64 reference computed from the dequantized weights (and,
    /// for the quantized-activation paths, the dequantized activations, so only summation
    /// error remains).
    #[test]
    fn dots_match_f64_reference() {
        for (seed, cols) in [(1u64, 32usize), (2, 96), (3, 256), (4, 1536), (5, 4096)] {
            let w = randoms(seed, cols);
            let x = activations(seed + 100, cols);
            let mut a8 = Q8Acts::default();
            a8.quantize(&x, cols);
            let mut a16 = Q16Acts::default();
            a16.quantize(&x, cols);
            let x8: Vec<f64> = (0..cols)
                .map(|i| a8.row(0).qs[i] as f64 * a8.row(0).d[i / QK] as f64)
                .collect();
            let x16: Vec<f64> = (0..cols)
                .map(|i| a16.row(0).qs[i] as f64 * a16.row(0).d[i / QK] as f64)
                .collect();
            for dtype in DType::ALL.into_iter().filter(|d| cols % d.block_len() == 0) {
                let mut bytes = Vec::new();
                quantize_row(dtype, &w, &mut bytes);
                assert_eq!(bytes.len(), dtype.row_bytes(cols));
                let mut wd = vec![0f32; cols];
                dequantize_row(dtype, &bytes, &mut wd);
                let dot64 = |x: &mut dyn Iterator<Item = f64>| -> f64 {
                    wd.iter().zip(x).map(|(a, b)| *a as f64 * b).sum()
                };
                let exact = dot64(&mut x.iter().map(|&v| v as f64));
                let norm: f64 = wd
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let got = dot_f32(dtype, &bytes, &x) as f64;
                assert!(
                    (got - exact).abs() <= 1e-6 * norm,
                    "{dtype} f32 path: {got} vs {exact}"
                );
                if dtype.is_quantized() {
                    let exact8 = dot64(&mut x8.iter().copied());
                    let got = dot_q8(dtype, &bytes, a8.row(0)) as f64;
                    assert!(
                        (got - exact8).abs() <= 1e-5 * norm,
                        "{dtype} q8 path: {got} vs {exact8}"
                    );
                    let exact16 = dot64(&mut x16.iter().copied());
                    let got = dot_q16(dtype, &bytes, a16.row(0)) as f64;
                    assert!(
                        (got - exact16).abs() <= 1e-5 * norm,
                        "{dtype} q16 path: {got} vs {exact16}"
                    );
                    // 16-bit activations are close to the f32 activations themselves
                    assert!(
                        (got - exact).abs() <= 1e-4 * norm,
                        "{dtype} q16 path vs f32 activations: {got} vs {exact}"
                    );
                }
            }
        }
    }

    /// Every path and kernel set, for odd row counts and several activation rows, against an
    /// f64 reference from the dequantized weights and f32 activations. NaN never passes.
    #[test]
    fn matmuls_match_f64_reference() {
        let (rows, n_t) = (13usize, 5usize);
        for dtype in DType::ALL {
            let cols = cols_for(dtype, 320);
            let x = activations(7, n_t * cols);
            let bytes = weights(dtype, 11, rows, cols);
            let rb = dtype.row_bytes(cols);
            let mut wd = vec![0f32; rows * cols];
            for (r, o) in wd.chunks_exact_mut(cols).enumerate() {
                dequantize_row(dtype, &bytes[r * rb..(r + 1) * rb], o);
            }
            for simd in simds() {
                for &path in paths(dtype) {
                    let got = run(simd, path, dtype, &bytes, cols, 0..rows, &x);
                    for t in 0..n_t {
                        for r in 0..rows {
                            let (wr, xr) = (&wd[r * cols..][..cols], &x[t * cols..][..cols]);
                            let exact: f64 =
                                wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let norm: f64 = wr
                                .iter()
                                .zip(xr)
                                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                                .sum();
                            // quantizing an activation moves it by at most half its block's
                            // scale amax/qmax; on top of that only f32 summation error
                            let qmax = match path {
                                Path::F32 => f64::INFINITY,
                                Path::Q8 => 127.0,
                                Path::Q16 => 32767.0,
                            };
                            let rounding: f64 = wr
                                .chunks(QK)
                                .zip(xr.chunks(QK))
                                .map(|(wb, xb)| {
                                    let amax = xb.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
                                    let sw: f64 = wb.iter().map(|v| v.abs() as f64).sum();
                                    sw * amax / qmax * 0.5
                                })
                                .sum();
                            let tol = rounding * 1.001 + 2e-6 * norm;
                            let g = got[t * rows + r] as f64;
                            assert!(
                                (g - exact).abs() <= tol,
                                "{dtype} {path:?} {simd:?} t={t} r={r}: {g} vs {exact} (tol {tol})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A dot's bits do not depend on the batch size, the row range or the tile it falls in.
    #[test]
    fn matmul_is_bitwise_batch_invariant() {
        let rows = 11usize;
        for dtype in DType::ALL {
            let cols = cols_for(dtype, 160);
            let x = activations(3, 9 * cols);
            let bytes = weights(dtype, 5, rows, cols);
            for simd in simds() {
                for &path in paths(dtype) {
                    // one token at a time, all rows
                    let single: Vec<Vec<f32>> = x
                        .chunks_exact(cols)
                        .map(|xr| run(simd, path, dtype, &bytes, cols, 0..rows, xr))
                        .collect();
                    for n_t in 1..=9 {
                        for range in [0..rows, 0..1, 1..2, 3..10, 2..11, 5..9, 7..11] {
                            let got = run(
                                simd,
                                path,
                                dtype,
                                &bytes,
                                cols,
                                range.clone(),
                                &x[..n_t * cols],
                            );
                            for t in 0..n_t {
                                for (i, r) in range.clone().enumerate() {
                                    let (a, b) = (got[t * range.len() + i], single[t][r]);
                                    assert!(
                                        a.to_bits() == b.to_bits(),
                                        "{dtype} {path:?} {simd:?} T={n_t} rows {range:?} t={t} \
                                         r={r}: {a} vs {b}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The types whose quantized-path kernels in `simd` give the scalar reference's bits (the
    /// AVX2 kernels round differently).
    fn bit_exact_types(simd: Simd) -> Vec<DType> {
        let all = DType::ALL.into_iter().filter(|d| d.is_quantized());
        match simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512Vnni | Simd::Amx => all.filter(|&d| avx512::supports(d)).collect(),
            Simd::Neon | Simd::NeonDotprod | Simd::NeonI8mm => all.collect(),
            _ => Vec::new(),
        }
    }

    /// The AVX-512, AMX, NEON, NEON-dotprod and NEON-i8mm kernels give the scalar reference's bits for the
    /// types they cover, on random raw blocks and 8- and 16-bit activations that reach the
    /// integer extremes, for any number of tokens (register chunks of 8, 4, 2, 1, sweeps of 64,
    /// tiles of 16) and any row range.
    #[test]
    fn simd_matmuls_give_the_scalar_bits() {
        use super::testing::{acts, random_blocks, Rng};
        let sets: Vec<Simd> = Simd::all_available()
            .into_iter()
            .filter(|&s| !bit_exact_types(s).is_empty())
            .collect();
        if sets.is_empty() {
            eprintln!(
                "no bit-exact SIMD kernels (AVX-512 VNNI, NEON) on this CPU: nothing to check"
            );
            return;
        }
        eprintln!("kernel sets checked: {sets:?}");
        fn check<Q: ActInt>(
            simd: Simd,
            dtype: DType,
            rng: &mut Rng,
            conv: impl Fn(i64) -> Q,
            min: i64,
            max: i64,
        ) {
            let (rows, nblk) = (37usize, 3usize);
            let cols = nblk * dtype.block_len();
            let w = random_blocks(dtype, rng, rows * nblk);
            // the packed copy serves row ranges from a group of 16 on
            let packed = PackedWeights::new(simd, dtype, &w, rows, cols);
            for n_t in [0usize, 1, 2, 3, 5, 8, 13, 16, 19, 33, 70] {
                let nb = n_t * cols / QK;
                let a = QActs {
                    cols,
                    qs: acts(rng, n_t * cols, &conv, min, max),
                    d: (0..nb)
                        .map(|_| (rng.next() % 1000) as f32 * 1e-4 - 0.05)
                        .collect(),
                    s: (0..nb)
                        .map(|_| (rng.next() % 1000) as f32 * 1e-2 - 5.0)
                        .collect(),
                };
                for range in [0..rows, 3..20, 16..33, 32..37, 36..37] {
                    let len = range.len();
                    let mut out = vec![f32::NAN; n_t * len];
                    matmul_q_with(simd, dtype, &w, cols, range.clone(), &a, &mut out, len);
                    let mut outs = vec![("file layout", out)];
                    if let Some(p) = packed.as_ref().filter(|_| range.start.is_multiple_of(16)) {
                        let mut out = vec![f32::NAN; n_t * len];
                        matmul_packed(p, range.clone(), &a, &mut out, len);
                        outs.push(("packed", out));
                    }
                    let rb = dtype.row_bytes(cols);
                    for (layout, out) in &outs {
                        for t in 0..n_t {
                            for (i, r) in range.clone().enumerate() {
                                let row = &w[r * rb..(r + 1) * rb];
                                let want = scalar::dot_q(dtype, row, a.row(t));
                                let got = out[t * len + i];
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{simd:?} {layout} {dtype} {} T={n_t} t={t} r={r}: {got} vs \
                                     {want}",
                                    std::any::type_name::<Q>()
                                );
                            }
                        }
                    }
                }
            }
        }
        let mut rng = Rng(5);
        for simd in sets {
            for dtype in bit_exact_types(simd) {
                for _ in 0..3 {
                    check(simd, dtype, &mut rng, |v| v as i8, -128, 127);
                    check(simd, dtype, &mut rng, |v| v as i16, -32768, 32767);
                }
            }
        }
    }

    /// A matrix without columns is left in the file's layout, not packed into chunks of 0.
    #[test]
    fn an_empty_matrix_is_not_packed() {
        for simd in Simd::all_available() {
            assert!(PackedWeights::new(simd, DType::Q4_K, &[], 16, 0).is_none());
        }
    }

    /// The dispatcher picks the kernel set expected of this CPU: tests/run.sh names it in
    /// LLMCAD_EXPECT_SIMD for each emulated ARM CPU, so that the dotprod and i8mm kernels are
    /// proven to run where the CPU has them, and the plain NEON ones where it has not.
    #[test]
    fn dispatcher_picks_the_expected_kernels() {
        let active = Simd::active();
        eprintln!("kernels in use: {}", active.name());
        match std::env::var("LLMCAD_EXPECT_SIMD") {
            Ok(want) => assert_eq!(active.name(), want),
            Err(_) => {
                eprintln!("NOTICE: LLMCAD_EXPECT_SIMD unset: checking only that the best set runs");
                assert_eq!(Simd::best(), Simd::all_available()[0]);
            }
        }
    }

    /// The SIMD quantizers give the scalar one's bits, ties and outliers included.
    #[test]
    fn quantize_simd_matches_scalar() {
        let mut x = activations(9, 64 * QK);
        // exact halves after scaling: amax 127 (or 32767) makes the scale 1
        for (i, v) in x[..QK].iter_mut().enumerate() {
            *v = if i == 0 { 127.0 } else { i as f32 - 15.5 };
        }
        for (i, v) in x[QK..2 * QK].iter_mut().enumerate() {
            *v = if i == 0 {
                -32767.0
            } else {
                i as f32 * 1000.0 + 0.5
            };
        }
        x[2 * QK..3 * QK].fill(0.0);
        for simd in simds() {
            let (mut a, mut b) = (Q8Acts::default(), Q8Acts::default());
            a.quantize_with(Simd::Scalar, &x, 4 * QK);
            b.quantize_with(simd, &x, 4 * QK);
            assert_eq!((&a.qs, &a.d, &a.s), (&b.qs, &b.d, &b.s), "{simd:?} q8");
            let (mut a, mut b) = (Q16Acts::default(), Q16Acts::default());
            a.quantize_with(Simd::Scalar, &x, 4 * QK);
            b.quantize_with(simd, &x, 4 * QK);
            assert_eq!((&a.qs, &a.d, &a.s), (&b.qs, &b.d, &b.s), "{simd:?} q16");
        }
    }

    /// Float weights with rows that are not a multiple of 32 (the tail runs outside the SIMD
    /// blocks).
    #[test]
    fn float_rows_with_tails() {
        let (rows, cols) = (5usize, 77usize);
        let x = randoms(1, 3 * cols);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let bytes = weights(dtype, 2, rows, cols);
            for simd in simds() {
                let got = run(simd, Path::F32, dtype, &bytes, cols, 0..rows, &x);
                let want = run(Simd::Scalar, Path::F32, dtype, &bytes, cols, 0..rows, &x);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{dtype} {simd:?}");
                }
            }
        }
    }
}
