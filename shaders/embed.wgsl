// out[t, c] = E[tokens[t], c] for the tokens whose id falls in this table chunk's rows.
{{ENABLE}}
struct Params {
    rows: u32,   // rows of this chunk
    cols: u32,
    n: u32,      // tokens
    row0: u32,   // first vocabulary id of this chunk
    groups_x: u32,
    out_off: u32, // first output float
    _pad1: u32,
    _pad2: u32,
    q_off: u32,
    d_off: u32,
    m_off: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
{{WEIGHTS}}
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * p.groups_x + wg.x) * 64u + li;
    if (i >= p.n * p.cols) {
        return;
    }
    let t = i / p.cols;
    let c = i % p.cols;
    let id = tokens[t];
    if (id >= p.row0 && id < p.row0 + p.rows) {
        out[p.out_off + i] = load_w(id - p.row0, c);
    }
}
