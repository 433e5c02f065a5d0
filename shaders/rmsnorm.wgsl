// out[row] = x[row] / rms(x[row]) · weight, one workgroup per row.
// The REDUCE placeholder selects the sum: a shared-memory tree, or subgroupAdd per subgroup.
{{ENABLE}}
struct Params {
    cols: u32,
    x_off: u32,    // index of the first row's first value
    out_off: u32,
    eps_bits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 64>;

{{REDUCE}}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let xo = p.x_off + wg.x * p.cols;
    let oo = p.out_off + wg.x * p.cols;
    var ss = 0.0;
    for (var c = li; c < p.cols; c += 64u) {
        let v = x[xo + c];
        ss = ss + v * v;
    }
    let total = reduce_sum(ss, li);
    let scale = 1.0 / sqrt(total / f32(p.cols) + bitcast<f32>(p.eps_bits));
    for (var c = li; c < p.cols; c += 64u) {
        out[oo + c] = x[xo + c] * scale * weight[c];
    }
}
