// Q5_K super-blocks as in the file (176 bytes); decoded by w_q45_k.wgsl.
const KW: u32 = 44u;
const K_QS: u32 = 12u;
