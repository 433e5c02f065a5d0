use llmcad::backend::*;
use llmcad::cpu::*;
use llmcad::model::*;
fn main() {
    let m = Model::load(std::path::Path::new("models/cache/SmolLM2-135M-Instruct.Q4_1.gguf"), &LoadOptions::default()).unwrap();
    let toks = m.tokenizer.encode("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n").unwrap();
    let mut res = vec![];
    for p in [Precision::F32, Precision::Q8Activations] {
        let mut b = CpuBackend::new(m.config.clone(), m.weights.clone(), &CpuOptions { threads: 1, precision: p, context: 64 });
        let l = b.forward(&Batch::chain(&toks, 0), Want::LAST_FULL).unwrap();
        res.push(l.dense(0).unwrap().to_vec());
    }
    let num: f32 = res[0].iter().zip(&res[1]).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
    let den: f32 = res[0].iter().map(|a| a * a).sum::<f32>().sqrt();
    for r in &res { let t = top_k(r, 3); println!("{:?}", t); }
    println!("rel err {} argmax {} {}", num / den, argmax(&res[0]), argmax(&res[1]));
}
#[allow(dead_code)]
fn unused() {}
