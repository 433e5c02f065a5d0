use llmcad::backend::{Backend, Batch, Want};
use llmcad::cpu::{CpuBackend, CpuOptions, Precision};
use llmcad::model::{LoadOptions, Model};
use llmcad::tokenizer::ChatMessage;
fn main() {
    let t = Model::load(
        "models/cache/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(),
        &LoadOptions::default(),
    )
    .unwrap();
    let d = Model::load(
        std::env::args().nth(1).unwrap().as_ref(),
        &LoadOptions::default(),
    )
    .unwrap();
    let (mut agree, mut total) = (0, 0);
    for p in include_str!("../benches/prompts.txt").lines().take(8) {
        let text = t
            .chat_template
            .as_ref()
            .unwrap()
            .render(&[ChatMessage::new("user", p)], true)
            .unwrap();
        let prompt = t.encode_prompt(&text).unwrap();
        let o = CpuOptions {
            threads: 2,
            precision: Precision::default(),
            context: 2048,
        };
        let mut tb = CpuBackend::new(t.config.clone(), t.weights.clone(), &o);
        let gen = llmcad::generate::generate(
            &mut tb,
            &prompt,
            &[],
            &llmcad::generate::GenerateOptions {
                max_tokens: 96,
                ignore_eos: true,
                ..Default::default()
            },
            &mut |_| true,
        )
        .unwrap()
        .tokens;
        let mut db = CpuBackend::new(d.config.clone(), d.weights.clone(), &o);
        let all: Vec<u32> = prompt.iter().chain(&gen).cloned().collect();
        let l = db.forward(&Batch::chain(&all, 0), Want::ALL_FULL).unwrap();
        for i in 0..gen.len() - 1 {
            let row = prompt.len() + i;
            total += 1;
            if l.argmax(row) == gen[i + 1] {
                agree += 1;
            }
        }
        // first generated token predicted from the prompt's last row
        total += 1;
        if l.argmax(prompt.len() - 1) == gen[0] {
            agree += 1;
        }
    }
    println!(
        "top-1 agreement {agree}/{total} = {:.3}",
        agree as f64 / total as f64
    );
}
