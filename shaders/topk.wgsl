// The k best (logit, id) of each row, best first, lower id first on ties, NaN as -inf: k rounds
// of a workgroup argmax over the entries ranked after the previous winner. One workgroup scans a
// whole row (a vocabulary of 150k), so it takes the largest size WebGPU guarantees, 256.
struct Params {
    vocab: u32,
    k: u32,
    in_off: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out_ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out_vals: array<f32>;

var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;

fn better(v: f32, i: u32, w: f32, j: u32) -> bool {
    return v > w || (v == w && i < j);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wg.x;
    let base = p.in_off + row * p.vocab;
    let neg_inf = bitcast<f32>(0xff800000u);
    var lv = 0.0;
    var lid = 0u;
    var have = false;
    for (var r = 0u; r < p.k; r++) {
        var best_v = neg_inf;
        var best_i = 0xffffffffu;
        for (var i = li; i < p.vocab; i += 256u) {
            var v = logits[base + i];
            if ((bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u) {
                v = neg_inf;
            }
            let after = !have || v < lv || (v == lv && i > lid);
            if (after && better(v, i, best_v, best_i)) {
                best_v = v;
                best_i = i;
            }
        }
        bv[li] = best_v;
        bi[li] = best_i;
        workgroupBarrier();
        for (var s = 128u; s > 0u; s >>= 1u) {
            if (li < s && better(bv[li + s], bi[li + s], bv[li], bi[li])) {
                bv[li] = bv[li + s];
                bi[li] = bi[li + s];
            }
            workgroupBarrier();
        }
        lv = bv[0];
        lid = bi[0];
        have = true;
        if (li == 0u) {
            out_ids[row * p.k + r] = lid;
            out_vals[row * p.k + r] = lv;
        }
        workgroupBarrier();
    }
}
