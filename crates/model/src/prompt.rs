//! Prompt styles: how instructions and chat turns become the text an instruction-tuned model was
//! trained on (the book's chapter 7: Alpaca's template, and Phi-3's in its exercise 7.1).
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
}

impl PromptStyle {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "alpaca" => Some(PromptStyle::Alpaca),
            "phi3" => Some(PromptStyle::Phi3),
            "plain" => Some(PromptStyle::Plain),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PromptStyle::Alpaca => "alpaca",
            PromptStyle::Phi3 => "phi3",
            PromptStyle::Plain => "plain",
        }
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
            PromptStyle::Plain => {
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
            PromptStyle::Plain => {
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
            PromptStyle::Plain => &[],
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
