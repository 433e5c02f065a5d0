// y[t, row] = Σ_c W[row, c] · x[t, c] for up to TOKENS tokens per workgroup; cols % 32 == 0 and
// the activations are vec4-aligned. The small-N kernel (decode and tree verification).
//
// Eight invocations share one weight row: lane j takes columns 4j..4j+3 of every 32-column
// block (`load4` from the weight snippet), so the eight lanes of a row read each block and its
// activations together, and keeps one running sum per token of its tile in a register. The
// lanes' sums meet in workgroup memory, where lane 0 adds them in lane order. One invocation per
// row, as before, left a 1536-row matrix 24 workgroups: an H200 decoded at 1% of its bandwidth.
// Measured there against 16 lanes walking whole blocks (faster at one token, 3.4x slower at 64)
// and 4 lanes of two vec4 each (slower at every size): BENCHMARKS.md, "A real GPU".
//
// The sum for (row, token) is the same computation whatever the tile size, the token's slot in
// the tile, the batch size or the number of rows: lane j's sequential sum `a + dot(w, x)` over
// the blocks, then lanes 0..7 in order. Tree verification therefore reproduces one-token decoding
// bit for bit.
//
// Lines tagged `//@T ` are repeated for token slots 0..TOKENS (`#` → the slot; shaders.rs).
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

const LANES: u32 = 8u;
const ROWS: u32 = 8u; // 64 / LANES
var<workgroup> part: array<f32, 64 * {{TOKENS}}>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let lane = li % LANES;
    let row = wg.x * ROWS + li / LANES;
    // out-of-range rows compute the last row and store nothing (all lanes reach the barrier)
    let rw = min(row, p.rows - 1u);
    let t0 = p.t_base + wg.y * {{TOKENS}}u;
    //@T let x# = (p.x_off + min(t0 + #u, p.n - 1u) * p.x_stride) / 4u + lane;
    //@T var a# = 0.0;
    for (var b = 0u; b < p.cols / 32u; b++) {
        let wv = load4(rw, b * 32u + lane * 4u);
        //@T a# = a# + dot(wv, x[x# + b * 8u]);
    }
    //@T part[# * 64u + li] = a#;
    workgroupBarrier();
    if (lane == 0u && row < p.rows) {
        var bv = 0.0;
        if ((p.mode & 2u) != 0u) {
            bv = bias[p.bias_off + row];
        }
        //@T store(t0 + #u, row, lanes_sum(# * 64u + li), bv);
    }
}

// lanes 0..7 of one row, in order
fn lanes_sum(first: u32) -> f32 {
    var s = part[first];
    for (var l = 1u; l < LANES; l++) {
        s = s + part[first + l];
    }
    return s;
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
