// Q4_K super-blocks as in the file (144 bytes); decoded by w_q45_k.wgsl.
const KW: u32 = 36u;
const K_QS: u32 = 4u;
