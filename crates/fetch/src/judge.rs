//! Scoring responses with a judge model behind any OpenAI-compatible chat endpoint (Ollama,
//! llama.cpp, vLLM, or `scratchllm serve`), with the book's chapter 7 prompt.
//!
//! Each score is written to the output file as soon as it arrives (atomically), so a judge that
//! fails midway loses nothing: run again and the items already scored are skipped.
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// One response to score.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub instruction: String,
    pub input: String,
    pub output: String,
    pub response: String,
}

/// The book's prompt: the formatted instruction, the correct output, the model's response.
pub fn prompt(item: &Item) -> String {
    let mut input = format!(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{}",
        item.instruction
    );
    if !item.input.is_empty() {
        input += &format!("\n\n### Input:\n{}", item.input);
    }
    format!(
        "Given the input `{input}` and correct output `{}`, score the model response `{}` on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only.",
        item.output, item.response
    )
}

/// The first whole number in `text`, if it is within 0..=100.
pub fn parse_score(text: &str) -> Option<u32> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|&s| s <= 100)
}

/// Where the judge is and how patient to be.
#[derive(Clone, Debug)]
pub struct Judge {
    /// The API base, e.g. `http://localhost:11434/v1`.
    pub url: String,
    pub model: String,
    pub timeout: Duration,
    /// Attempts after the first, on connection errors, 429 and 5xx.
    pub retries: u32,
    pub api_key: Option<String>,
}

/// One item's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub index: usize,
    pub score: Option<u32>,
    /// What went wrong (an answer that is not a score, an HTTP error), when `score` is `None`.
    pub error: Option<String>,
    /// The judge's raw answer.
    pub answer: Option<String>,
}

/// The output file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub judge_url: String,
    pub judge_model: String,
    pub items: Vec<Scored>,
    pub scored: usize,
    pub failed: usize,
    /// Mean of the scores obtained.
    pub average: Option<f64>,
}

impl Report {
    fn summarize(&mut self) {
        let scores: Vec<f64> = self
            .items
            .iter()
            .filter_map(|s| s.score.map(f64::from))
            .collect();
        self.scored = scores.len();
        self.failed = self.items.len() - scores.len();
        self.average =
            (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
    }
}

/// Why asking failed: `Unreachable` stops the run (the judge is down), `Item` is this item's.
#[derive(Debug)]
pub enum AskError {
    Unreachable(String),
    Item(String),
}

impl Judge {
    /// The judge's answer to one prompt, retried with backoff on transient failures.
    pub fn ask(&self, prompt: &str) -> Result<String, AskError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}/chat/completions", self.url.trim_end_matches('/'));
        let body = json!({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                          "temperature": 0, "seed": 123, "max_tokens": 16})
        .to_string();
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 << attempt.min(5)));
            }
            let mut req = agent.post(&url).header("Content-Type", "application/json");
            if let Some(key) = &self.api_key {
                req = req.header("Authorization", format!("Bearer {key}"));
            }
            let mut resp = match req.send(body.as_str()) {
                Ok(r) => r,
                Err(e) => {
                    last = format!("cannot reach the judge at {url}: {e}");
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            if status == 429 || status >= 500 {
                last = format!(
                    "the judge answered HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                );
                continue;
            }
            if status != 200 {
                return Err(AskError::Item(format!(
                    "the judge answered HTTP {status}: {}",
                    text.chars().take(300).collect::<String>()
                )));
            }
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                AskError::Item(format!(
                    "the judge's answer is not JSON ({e}): {}",
                    text.chars().take(200).collect::<String>()
                ))
            })?;
            return v["choices"][0]["message"]["content"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| {
                    AskError::Item(format!(
                        "the judge's answer has no choices[0].message.content: {}",
                        text.chars().take(200).collect::<String>()
                    ))
                });
        }
        Err(AskError::Unreachable(last))
    }

    /// Scores `items` into `out`, skipping indices already scored there; calls `progress` after
    /// each. Stops with an error when the judge is unreachable (what was scored stays in `out`).
    pub fn score_all(
        &self,
        items: &[Item],
        out: &Path,
        progress: &mut dyn FnMut(&Scored, usize, usize),
    ) -> Result<Report, String> {
        let mut report: Report = std::fs::read_to_string(out)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .filter(|r: &Report| r.judge_model == self.model)
            .unwrap_or_default();
        report.judge_url = self.url.clone();
        report.judge_model = self.model.clone();
        report
            .items
            .retain(|s| s.score.is_some() && s.index < items.len());
        let done: std::collections::HashSet<usize> = report.items.iter().map(|s| s.index).collect();
        let save = |r: &mut Report| -> Result<(), String> {
            r.items.sort_by_key(|s| s.index);
            r.summarize();
            let text = serde_json::to_string_pretty(r).map_err(|e| e.to_string())? + "\n";
            scratchllm_tokenizer::io::atomic_write(out, text.as_bytes()).map_err(|e| e.to_string())
        };
        for (index, item) in items.iter().enumerate() {
            if done.contains(&index) {
                continue;
            }
            let scored = match self.ask(&prompt(item)) {
                Ok(answer) => match parse_score(&answer) {
                    Some(score) => Scored {
                        index,
                        score: Some(score),
                        error: None,
                        answer: Some(answer),
                    },
                    None => Scored {
                        index,
                        score: None,
                        error: Some(format!(
                            "the judge answered {answer:?}, which is not a score from 0 to 100"
                        )),
                        answer: Some(answer),
                    },
                },
                Err(AskError::Item(e)) => Scored {
                    index,
                    score: None,
                    error: Some(e),
                    answer: None,
                },
                Err(AskError::Unreachable(e)) => {
                    save(&mut report)?;
                    return Err(format!(
                        "{e}; stopped at item {index} of {}. The {} scores so far are in {}; run again to continue",
                        items.len(),
                        report.scored,
                        out.display()
                    ));
                }
            };
            report.items.push(scored.clone());
            save(&mut report)?;
            progress(&scored, report.items.len(), items.len());
        }
        save(&mut report)?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_the_first_number_in_range() {
        assert_eq!(parse_score("85"), Some(85));
        assert_eq!(parse_score(" Score: 70/100."), Some(70));
        assert_eq!(parse_score("100"), Some(100));
        assert_eq!(parse_score("150"), None);
        assert_eq!(parse_score("I cannot score this."), None);
    }

    #[test]
    fn the_prompt_is_the_books() {
        let p = prompt(&Item {
            instruction: "Rewrite the sentence using a simile.".into(),
            input: "The car is very fast.".into(),
            output: "The car is as fast as lightning.".into(),
            response: "The car is as fast as a cheetah.".into(),
        });
        assert!(p.starts_with("Given the input `Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nRewrite the sentence using a simile.\n\n### Input:\nThe car is very fast.` and correct output `The car is as fast as lightning.`, score the model response `The car is as fast as a cheetah.` on a scale from 0 to 100"));
        assert!(p.ends_with("Respond with the integer number only."));
    }
}
