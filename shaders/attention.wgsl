// Attention of one (token, head) per workgroup over the KV cache: the committed prefix (slots
// 0..base) then the batch nodes the token sees (`vis[vis_off[t]..vis_off[t+1]]`, increasing,
// at slots base + j), less the keys outside the layer's window. Keys are visited by their index
// in that list, in chunks of 64, with an online softmax, so a node's result does not depend on
// where its ancestors sit in the batch.
struct Params {
    n_heads: u32,
    group: u32,     // query heads per kv head
    head_dim: u32,
    base: u32,
    q_dim: u32,
    kv_dim: u32,
    scale_bits: u32,
    softcap_bits: u32, // scores become cap · tanh(score / cap); 0: no cap
    window: u32,       // a query at position q sees keys at q - k < window; 0: every key
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<f32>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;
@group(0) @binding(4) var<storage, read> vis_off: array<u32>;
@group(0) @binding(5) var<storage, read> vis: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
// the position of each slot's token; batch node t is in slot base + t
@group(0) @binding(7) var<storage, read> pos: array<u32>;

const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, 256>;
var<workgroup> pr: array<f32, 64>;
var<workgroup> sl: array<u32, 64>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wg.x;
    let t = wg.y;
    let hd = p.head_dim;
    let g = h / p.group;
    let scale = bitcast<f32>(p.scale_bits);
    let cap = bitcast<f32>(p.softcap_bits);
    let q_pos = pos[p.base + t];
    for (var d = li; d < hd; d += 64u) {
        qs[d] = q[t * p.q_dim + h * hd + d];
    }
    let vo = vis_off[t];
    let total = p.base + (vis_off[t + 1u] - vo);
    var m = NEG;
    var l = 0.0;
    var o = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    workgroupBarrier();
    for (var c0 = 0u; c0 < total; c0 += 64u) {
        let j = c0 + li;
        var s = NEG;
        var slot = 0u;
        var seen = false;
        if (j < total) {
            slot = select(p.base + vis[vo + j - p.base], j, j < p.base);
            seen = p.window == 0u || q_pos - pos[slot] < p.window;
        }
        if (seen) {
            let ko = slot * p.kv_dim + g * hd;
            var dot = 0.0;
            for (var d = 0u; d < hd; d++) {
                dot = dot + qs[d] * kc[ko + d];
            }
            s = dot * scale;
            if (cap > 0.0) {
                // tanh saturates in f32 beyond |x| = 10; the clamp keeps it from overflowing
                s = cap * tanh(clamp(s / cap, -10.0, 10.0));
            }
        }
        sl[li] = slot;
        red[li] = s;
        workgroupBarrier();
        for (var st = 32u; st > 0u; st >>= 1u) {
            if (li < st) {
                red[li] = max(red[li], red[li + st]);
            }
            workgroupBarrier();
        }
        let m_new = max(m, red[0]);
        let alpha = exp(m - m_new);
        pr[li] = select(0.0, exp(s - m_new), seen);
        workgroupBarrier();
        let cnt = min(64u, total - c0);
        var lsum = 0.0;
        for (var jj = 0u; jj < cnt; jj++) {
            lsum = lsum + pr[jj];
        }
        l = l * alpha + lsum;
        for (var k = 0u; k < 4u; k++) {
            let d = li + 64u * k;
            if (d < hd) {
                var acc = 0.0;
                for (var jj = 0u; jj < cnt; jj++) {
                    acc = acc + pr[jj] * vc[sl[jj] * p.kv_dim + g * hd + d];
                }
                o[k] = o[k] * alpha + acc;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var k = 0u; k < 4u; k++) {
        let d = li + 64u * k;
        if (d < hd) {
            out[t * p.q_dim + h * hd + d] = o[k] / l;
        }
    }
}
