// y[t, row] = Σ_c W[row, c] · x[t, c] for up to TOKENS tokens per workgroup; cols % 32 == 0 and
// the activations are vec4-aligned. The small-N kernel (decode and tree verification).
//
// One invocation owns one weight row and walks it in 32-column blocks: it decodes a block once
// (8 vec4, `wblock` from the weight snippet) and multiplies it with every token of its tile,
// keeping one running sum per token in a register. No workgroup memory, no barriers, no
// cross-invocation reduction: the sum for (row, token) is one invocation's sequential sum over the
// blocks in column order, `a + dot(w0, x0) + dot(w1, x1) + … + dot(w7, x7)` per block, whatever
// the tile size, the token's slot in the tile, the batch size or the number of rows. Tree
// verification therefore reproduces one-token decoding bit for bit.
//
// The activations of a block are the same for every invocation. With subgroups (of at least 8
// invocations) each invocation loads one of the block's 8 vec4 (contiguous across invocations)
// and `subgroupBroadcast` hands them around; without, every invocation loads all 8. Both give
// the same values, so the two variants give the same bits.
//
// Lines tagged `//@T ` are repeated for token slots 0..TOKENS (`#` → the slot); lines tagged
// `//@S ` are kept in the subgroup variant only, `//@U ` in the other only (shaders.rs).
{{ENABLE}}
struct Params {
    rows: u32,      // rows of this weight chunk
    cols: u32,
    n: u32,         // tokens (the last tile is padded with copies of the last token)
    x_stride: u32,  // floats per activation row
    x_off: u32,     // float index of token 0's input (multiple of 4)
    y_stride: u32,  // floats per output row
    y_off: u32,     // output index of (token 0, chunk row 0)
    mode: u32,      // bit 0: add into y (residual); bit 1: add bias
    q_off: u32,     // words: quants / values
    d_off: u32,     // words: f16 scales, two per word
    m_off: u32,     // words: f16 minimums (Q4_1, Q5_1)
    bias_off: u32,  // bias index of chunk row 0
    t_base: u32,    // first token of this dispatch
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
{{WEIGHTS}}
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    //@S @builtin(subgroup_invocation_id) sid: u32,
) {
    let row = wg.x * 64u + li;
    // out-of-range invocations compute the last row (subgroup operations need every lane)
    let rw = min(row, p.rows - 1u);
    let t0 = p.t_base + wg.y * {{TOKENS}}u;
    //@S let sl = sid % 8u;
    //@T let x# = (p.x_off + min(t0 + #u, p.n - 1u) * p.x_stride) / 4u;
    //@T var a# = 0.0;
    for (var b = 0u; b < p.cols / 32u; b++) {
        let wv = wblock(rw, b);
        //@T let c# = x# + b * 8u;
        //@S //@T let v# = x[c# + sl];
        //@S //@T a# = a# + dot(wv[0], subgroupBroadcast(v#, 0u)) + dot(wv[1], subgroupBroadcast(v#, 1u)) + dot(wv[2], subgroupBroadcast(v#, 2u)) + dot(wv[3], subgroupBroadcast(v#, 3u)) + dot(wv[4], subgroupBroadcast(v#, 4u)) + dot(wv[5], subgroupBroadcast(v#, 5u)) + dot(wv[6], subgroupBroadcast(v#, 6u)) + dot(wv[7], subgroupBroadcast(v#, 7u));
        //@U //@T a# = a# + dot(wv[0], x[c#]) + dot(wv[1], x[c# + 1u]) + dot(wv[2], x[c# + 2u]) + dot(wv[3], x[c# + 3u]) + dot(wv[4], x[c# + 4u]) + dot(wv[5], x[c# + 5u]) + dot(wv[6], x[c# + 6u]) + dot(wv[7], x[c# + 7u]);
    }
    if (row < p.rows) {
        var bv = 0.0;
        if ((p.mode & 2u) != 0u) {
            bv = bias[p.bias_off + row];
        }
        //@T store(t0 + #u, row, a#, bv);
    }
}

fn store(t: u32, row: u32, a: f32, bv: f32) {
    if (t < p.n) {
        let yi = p.y_off + t * p.y_stride + row;
        var v = a;
        if ((p.mode & 2u) != 0u) {
            v = v + bv;
        }
        if ((p.mode & 1u) != 0u) {
            v = y[yi] + v;
        }
        y[yi] = v;
    }
}
