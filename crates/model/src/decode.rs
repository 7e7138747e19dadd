//! One decode loop for every front end that streams text (the terminal chat, the server's engine):
//! a [`Generation`], its tokens turned into text without splitting a UTF-8 character, ended by a
//! stop id (end-of-text, end of turn), a stop string (held back until it can no longer be one, and
//! never sent), or the token limit.
use crate::error::Result;
use crate::generate::{GenerateOptions, Generation};
use crate::gpt::Gpt;
use crate::stop::StopFilter;
use scratchllm_tokenizer::{StreamDecoder, Tokenizer};

/// Why a generation ended (OpenAI's `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop id or a stop string.
    Stop,
    /// The token limit.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What one decoding step gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text released by this token (empty while it might still begin a stop string).
    Text(String),
    /// The end: the last text (the rest held back, if no stop string was reached), and why.
    Done(String, Finish),
}

/// Tokens turned into text as they come: split UTF-8 characters held until whole, a stop id or
/// a stop string ends it (the stop string never sent).
pub struct TextStream<'t> {
    decoder: StreamDecoder<'t>,
    filter: StopFilter,
    stop_ids: Vec<u32>,
    done: bool,
}

impl<'t> TextStream<'t> {
    /// `stop_ids` end the text without being decoded, `stops` end it before the first stop string.
    pub fn new(tok: &'t Tokenizer, stop_ids: Vec<u32>, stops: Vec<String>) -> Self {
        TextStream {
            decoder: StreamDecoder::new(tok),
            filter: StopFilter::new(stops),
            stop_ids,
            done: false,
        }
    }

    /// The text token `id` releases, or the end when it is a stop id or completes a stop string.
    pub fn push(&mut self, id: u32) -> Result<Piece> {
        let (text, finish) = if self.stop_ids.contains(&id) {
            (self.flush(), Some(Finish::Stop))
        } else {
            let (text, hit) = self.filter.push(&self.decoder.push(id)?);
            (text, hit.then_some(Finish::Stop))
        };
        Ok(match finish {
            Some(f) => {
                self.done = true;
                Piece::Done(text, f)
            }
            None => Piece::Text(text),
        })
    }

    /// The end at the token limit: what is still held back (unless a stop string completes in it).
    pub fn finish(&mut self) -> Piece {
        self.done = true;
        let (text, hit) = self.filter.push(&self.decoder.finish());
        if hit {
            return Piece::Done(text, Finish::Stop);
        }
        Piece::Done(text + &self.filter.finish(), Finish::Length)
    }

    /// The ids that end the text.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether the end was given.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// What is still held back when a stop id arrives: undecoded bytes and a partial stop string.
    fn flush(&mut self) -> String {
        let (text, hit) = self.filter.push(&self.decoder.finish());
        if hit {
            text
        } else {
            text + &self.filter.finish()
        }
    }
}

/// A generation decoded to text as it goes.
pub struct Decoding<'m> {
    generation: Generation<'m>,
    text: TextStream<'m>,
}

impl<'m> Decoding<'m> {
    /// Checks the settings and the prompt (as [`Generation::new`]); `stop_ids` end the text without
    /// being decoded, `stops` end it before the first stop string.
    pub fn new(
        model: &'m Gpt,
        tok: &'m Tokenizer,
        prompt: &[u32],
        opts: &GenerateOptions,
        stop_ids: Vec<u32>,
        stops: Vec<String>,
    ) -> Result<Self> {
        Ok(Decoding {
            generation: Generation::new(model, prompt, opts)?,
            text: TextStream::new(tok, stop_ids, stops),
        })
    }

    /// Generates one token and returns the text it releases, or the end (`None` after it).
    pub fn next_piece(&mut self) -> Result<Option<Piece>> {
        if self.text.is_done() {
            return Ok(None);
        }
        Ok(Some(match self.generation.next_token()? {
            Some(id) => self.text.push(id)?,
            None => self.text.finish(),
        }))
    }

    /// Tokens generated so far (a stop id included).
    pub fn produced(&self) -> usize {
        self.generation.produced()
    }
}
