//! Prompt styles: how instructions and chat turns become the text an instruction-tuned model was
//! trained on (the book's chapter 7: Alpaca's template, and Phi-3's in its exercise 7.1), or the
//! model's own chat template (Llama 3's, Qwen3's, Gemma 3's, shipped with its tokenizer).
use scratchllm_tokenizer::{template::ChatOptions, SpecialMode, Tokenizer};
use serde::{Deserialize, Serialize};

/// A prompt template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptStyle {
    /// "Below is an instruction ... ### Instruction: ... ### Input: ... ### Response:".
    Alpaca,
    /// "<|user|>\n...\n<|assistant|>\n".
    Phi3,
    /// No template: the messages' contents joined by newlines (base models).
    Plain,
    /// The model's own chat template (`chat_template` in its tokenizer_config.json, rendered as
    /// transformers' `apply_chat_template` with the generation prompt); its special tokens are
    /// encoded as such, and generation stops at its end-of-turn tokens.
    Template,
}

impl PromptStyle {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "alpaca" => Some(PromptStyle::Alpaca),
            "phi3" => Some(PromptStyle::Phi3),
            "plain" => Some(PromptStyle::Plain),
            "template" => Some(PromptStyle::Template),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PromptStyle::Alpaca => "alpaca",
            PromptStyle::Phi3 => "phi3",
            PromptStyle::Plain => "plain",
            PromptStyle::Template => "template",
        }
    }

    /// The style for a model: the one it was tuned with, else its tokenizer's chat template when
    /// it has one, else Alpaca (the book's).
    pub fn for_model(recorded: Option<PromptStyle>, tok: &Tokenizer) -> PromptStyle {
        recorded.unwrap_or(if tok.meta().templates.is_empty() {
            PromptStyle::Alpaca
        } else {
            PromptStyle::Template
        })
    }

    /// The token ids of a conversation's prompt, ending where the assistant's answer begins.
    pub fn encode_chat(self, tok: &Tokenizer, messages: &[Message]) -> crate::Result<Vec<u32>> {
        if self != PromptStyle::Template {
            return Ok(tok.encode(&self.chat(messages), SpecialMode::AsText)?);
        }
        let json = serde_json::to_string(messages)
            .map_err(|e| crate::ModelError::Config(format!("messages: {e}")))?;
        let opts = ChatOptions {
            add_generation_prompt: true,
            ..Default::default()
        };
        let text = tok.render_chat(&json, &opts)?;
        // The template writes its special tokens (<|im_start|>, <start_of_turn>, ...) as text.
        Ok(tok.encode(&text, SpecialMode::Allow)?)
    }

    /// The token ids of one instruction's prompt (the book's `format_input`; with a template, one
    /// user turn holding the instruction and its input).
    pub fn encode_instruction(
        self,
        tok: &Tokenizer,
        instruction: &str,
        input: &str,
    ) -> crate::Result<Vec<u32>> {
        if self != PromptStyle::Template {
            return Ok(tok.encode(&self.instruction(instruction, input), SpecialMode::AsText)?);
        }
        let content = if input.is_empty() {
            instruction.to_string()
        } else {
            format!("{instruction}\n\n{input}")
        };
        self.encode_chat(
            tok,
            &[Message {
                role: Role::User,
                content,
            }],
        )
    }

    /// The prompt for one instruction with an optional input (the book's `format_input`), ending
    /// where the response begins.
    pub fn instruction(self, instruction: &str, input: &str) -> String {
        match self {
            PromptStyle::Alpaca => {
                let mut s = format!("{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}");
                if !input.is_empty() {
                    s += &format!("\n\n### Input:\n{input}");
                }
                s + "\n\n### Response:\n"
            }
            PromptStyle::Phi3 => {
                let mut s = format!("<|user|>\n{instruction}");
                if !input.is_empty() {
                    s += &format!("\n{input}");
                }
                s + "\n<|assistant|>\n"
            }
            // A template is rendered with the tokenizer ([`PromptStyle::encode_instruction`]); as
            // text without one, the plain form.
            PromptStyle::Plain | PromptStyle::Template => {
                if input.is_empty() {
                    format!("{instruction}\n")
                } else {
                    format!("{instruction}\n{input}\n")
                }
            }
        }
    }

    /// A conversation as one prompt ending where the assistant's next answer begins. A system
    /// message replaces Alpaca's preamble; earlier turns are repeated in the template.
    pub fn chat(self, messages: &[Message]) -> String {
        let mut out = String::new();
        let system: Vec<&str> = messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        match self {
            PromptStyle::Alpaca => {
                out += &if system.is_empty() {
                    ALPACA_PREAMBLE.to_string()
                } else {
                    system.join("\n")
                };
                for m in messages {
                    match m.role {
                        Role::System => {}
                        Role::User => out += &format!("\n\n### Instruction:\n{}", m.content),
                        Role::Assistant => out += &format!("\n\n### Response:\n{}", m.content),
                    }
                }
                out += "\n\n### Response:\n";
            }
            PromptStyle::Phi3 => {
                if !system.is_empty() {
                    out += &format!("<|system|>\n{}\n", system.join("\n"));
                }
                for m in messages {
                    match m.role {
                        Role::System => {}
                        Role::User => out += &format!("<|user|>\n{}\n", m.content),
                        Role::Assistant => out += &format!("<|assistant|>\n{}\n", m.content),
                    }
                }
                out += "<|assistant|>\n";
            }
            PromptStyle::Plain | PromptStyle::Template => {
                for m in messages {
                    out += &m.content;
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Text that starts a new turn: an answer ends before it.
    pub fn turn_markers(self) -> &'static [&'static str] {
        match self {
            PromptStyle::Alpaca => &["\n### Instruction:", "\n### Response:"],
            PromptStyle::Phi3 => &["<|user|>", "<|assistant|>", "<|end|>"],
            PromptStyle::Plain | PromptStyle::Template => &[],
        }
    }
}

pub const ALPACA_PREAMBLE: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.";

/// Who said a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_books_alpaca_prompt() {
        // Chapter 7's `format_input` for the "Identify the correct spelling" example.
        let p = PromptStyle::Alpaca.instruction(
            "Identify the correct spelling of the following word.",
            "Ocassion",
        );
        assert_eq!(
            p,
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\
             \n\n### Instruction:\nIdentify the correct spelling of the following word.\n\n### Input:\nOcassion\n\n### Response:\n"
        );
        let chat = PromptStyle::Alpaca.chat(&[
            Message {
                role: Role::User,
                content: "Hi".into(),
            },
            Message {
                role: Role::Assistant,
                content: "Hello.".into(),
            },
            Message {
                role: Role::User,
                content: "Name a color.".into(),
            },
        ]);
        assert!(chat.ends_with(
            "### Instruction:\nHi\n\n### Response:\nHello.\n\n### Instruction:\nName a color.\n\n### Response:\n"
        ));
        assert_eq!(
            PromptStyle::Phi3.instruction("Rewrite.", "x"),
            "<|user|>\nRewrite.\nx\n<|assistant|>\n"
        );
    }
}
