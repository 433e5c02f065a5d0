// y[t, row] = Σ_c W[row, c] · x[t, c] for a tile of up to 64 tokens per workgroup.
//
// A workgroup owns `p.wg_rows` weight rows (64, 32, 16 or 8: fewer rows for more tokens, so all
// 64 threads have work). Per chunk of columns it decodes those rows once into workgroup memory,
// then each thread multiplies one row with the activations of up to 8 tokens. Each output is one
// thread's sequential sum over the columns, whatever the row/token split and chunk size, so a
// (row, token) result is the same computation for any batch size and any slot: tree
// verification reproduces decoding bit for bit.
//
// The WEIGHTS placeholder below is replaced by a weight-format snippet that declares binding 1 and `load_w`.
{{ENABLE}}
struct Params {
    rows: u32,      // rows of this weight chunk
    cols: u32,
    n: u32,         // tokens
    x_stride: u32,  // floats per activation row
    x_off: u32,
    y_stride: u32,  // floats per output row
    y_off: u32,     // output index of (token 0, chunk row 0)
    mode: u32,      // bit 0: add into y (residual); bit 1: add bias
    q_off: u32,     // words: quants / values
    d_off: u32,     // words: f16 scales, two per word
    m_off: u32,     // words: f16 minimums (Q4_1, Q5_1)
    bias_off: u32,  // bias index of chunk row 0
    wg_rows: u32,   // rows per workgroup: 64 / token slots
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
{{WEIGHTS}}
@group(0) @binding(2) var<storage, read> x: array<XV>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// The VECTOR placeholder below defines XV (f32, or vec4<f32> when the columns, the input
// stride and offset are multiples of 4), VW (its width), `dotv` and `load_v`.
{{VECTOR}}

const WS: u32 = 2048u;
var<workgroup> ws: array<XV, 2048u / VW>; // wg_rows × chunk decoded weights

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let rows_wg = p.wg_rows;
    let slots = 64u / rows_wg;      // token slots
    let chunk = WS / rows_wg;       // columns decoded per step
    let row0 = wg.x * rows_wg;
    let t0 = wg.y * slots * 8u;
    let t_end = min(p.n, t0 + slots * 8u);
    let r = li % rows_wg;
    let ts = li / rows_wg;
    let row = row0 + r;
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let chunk_v = chunk / VW;
    for (var c0 = 0u; c0 < p.cols; c0 += chunk) {
        let len_v = min(chunk, p.cols - c0) / VW;
        for (var e = li; e < WS / VW; e += 64u) {
            let rr = e / chunk_v;
            let cc = e % chunk_v;
            var v = XV(0.0);
            if (row0 + rr < p.rows && cc < len_v) {
                v = load_v(row0 + rr, c0 + cc * VW);
            }
            ws[e] = v;
        }
        workgroupBarrier();
        if (row < p.rows) {
            for (var k = 0u; k < 8u; k++) {
                let t = t0 + ts + slots * k;
                if (t < t_end) {
                    let xo = (p.x_off + t * p.x_stride + c0) / VW;
                    let wo = r * chunk_v;
                    var s = acc[k];
                    for (var c = 0u; c < len_v; c++) {
                        s = s + dotv(ws[wo + c], x[xo + c]);
                    }
                    acc[k] = s;
                }
            }
        }
        workgroupBarrier();
    }
    if (row < p.rows) {
        for (var k = 0u; k < 8u; k++) {
            let t = t0 + ts + slots * k;
            if (t < t_end) {
                let yi = p.y_off + t * p.y_stride + row;
                var v = acc[k];
                if ((p.mode & 2u) != 0u) {
                    v = v + bias[p.bias_off + row];
                }
                if ((p.mode & 1u) != 0u) {
                    v = y[yi] + v;
                }
                y[yi] = v;
            }
        }
    }
}
