//! The model worker: one thread owns the model and serves a bounded queue of jobs. Generations are
//! interleaved token by token (round robin over up to `max_active` of them), so every client sees
//! tokens as soon as its turn comes and a long answer does not hold the others back; a generation
//! whose client has gone away is dropped at its next turn.
use scratchllm_model::classifier::{predict, ClassifierSpec, Prediction};
pub use scratchllm_model::decode::Finish;
use scratchllm_model::decode::{Decoding, Piece};
use scratchllm_model::{GenerateOptions, Gpt, GptConfig, PromptStyle};
use scratchllm_tokenizer::Tokenizer;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What the model does.
#[derive(Clone, Debug)]
pub enum Kind {
    /// A language model; chat messages are formatted in this style.
    Lm {
        style: PromptStyle,
    },
    Classifier(ClassifierSpec),
}

/// What a generation sends back, in order: text pieces, then one `Done` or `Error`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done {
        finish: Finish,
        completion_tokens: usize,
    },
    Error(String),
}

/// Work for the model thread.
pub enum Job {
    Generate {
        prompt: Vec<u32>,
        opts: GenerateOptions,
        stops: Vec<String>,
        events: mpsc::UnboundedSender<Event>,
    },
    Classify {
        texts: Vec<String>,
        reply: oneshot::Sender<Result<Vec<Prediction>, String>>,
    },
}

/// A loaded model behind its queue.
pub struct Engine {
    pub name: String,
    pub config: GptConfig,
    pub tokenizer: Arc<Tokenizer>,
    pub kind: Kind,
    pub eos: Option<u32>,
    pub jobs: mpsc::Sender<Job>,
}

/// One generation being served.
struct Active<'m> {
    decoding: Decoding<'m>,
    events: mpsc::UnboundedSender<Event>,
}

impl Active<'_> {
    /// Produces one token; `false` when this generation is over.
    fn step(&mut self) -> bool {
        if self.events.is_closed() {
            eprintln!(
                "generation dropped after {} tokens: the client disconnected",
                self.decoding.produced()
            );
            return false;
        }
        let piece = match catch_unwind(AssertUnwindSafe(|| self.decoding.next_piece())) {
            Ok(Ok(piece)) => piece,
            Ok(Err(e)) => return self.fail(e.to_string()),
            Err(_) => return self.fail("internal error while generating".into()),
        };
        match piece {
            Some(Piece::Text(text)) => {
                self.send_text(text);
                true
            }
            Some(Piece::Done(text, finish)) => {
                self.send_text(text);
                let _ = self.events.send(Event::Done {
                    finish,
                    completion_tokens: self.decoding.produced(),
                });
                false
            }
            None => false,
        }
    }

    fn send_text(&self, text: String) {
        if !text.is_empty() {
            let _ = self.events.send(Event::Text(text));
        }
    }

    fn fail(&self, message: String) -> bool {
        let _ = self.events.send(Event::Error(message));
        false
    }
}

/// Runs the model thread until every sender of `jobs` is gone.
pub fn work(
    model: Gpt,
    tok: Arc<Tokenizer>,
    kind: Kind,
    mut jobs: mpsc::Receiver<Job>,
    max_active: usize,
) {
    // Generation ends at the end of a text or of a turn (the chat templates' end-of-turn tokens).
    let stop_ids = tok.stop_ids();
    let mut active: Vec<Active> = Vec::new();
    loop {
        while active.len() < max_active.max(1) {
            let job = if active.is_empty() {
                match jobs.blocking_recv() {
                    Some(j) => j,
                    None => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            };
            match job {
                Job::Generate {
                    prompt,
                    opts,
                    stops,
                    events,
                } => match Decoding::new(&model, &tok, &prompt, &opts, stop_ids.clone(), stops) {
                    Ok(decoding) => active.push(Active { decoding, events }),
                    Err(e) => {
                        let _ = events.send(Event::Error(e.to_string()));
                    }
                },
                Job::Classify { texts, reply } => {
                    let result = match &kind {
                        Kind::Classifier(spec) => {
                            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                            catch_unwind(AssertUnwindSafe(|| {
                                predict(&model, spec, &tok, &refs, 16).map_err(|e| e.to_string())
                            }))
                            .unwrap_or_else(|_| Err("internal error while classifying".into()))
                        }
                        Kind::Lm { .. } => Err("this model is not a classifier".into()),
                    };
                    let _ = reply.send(result);
                }
            }
        }
        active.retain_mut(|a| a.step());
    }
}
