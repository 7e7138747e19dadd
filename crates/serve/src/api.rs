//! OpenAI's request fields, checked one by one so that every mistake gets a 400 that names the
//! field, and OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use scratchllm_model::prompt::{Message, Role};
use serde_json::{json, Map, Value};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    pub fn request(message: impl Into<String>) -> Self {
        ApiError {
            param: None,
            ..Self::bad("", message)
        }
    }

    pub fn status(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: Some(code),
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// A JSON object body.
pub fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::request("the request body is not valid UTF-8"));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::request("the request body must be a JSON object")),
        Err(e) => Err(ApiError::request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// Typed access to a request's fields.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(ApiError::bad(
                name,
                format!("{name} must be a string, not {}", kind(v)),
            )),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(ApiError::bad(
                name,
                format!("{name} must be true or false, not {}", kind(v)),
            )),
        }
    }

    /// A number within `[lo, hi]`.
    pub fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if x >= lo && x <= hi {
                    Ok(Some(x))
                } else {
                    Err(ApiError::bad(
                        name,
                        format!("{name} is {n}; it must be between {lo} and {hi}"),
                    ))
                }
            }
            Some(v) => Err(ApiError::bad(
                name,
                format!("{name} must be a number, not {}", kind(v)),
            )),
        }
    }

    /// An integer within `[lo, hi]`.
    pub fn integer(&self, name: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) if x >= lo && x <= hi => Ok(Some(x)),
                _ => Err(ApiError::bad(
                    name,
                    format!("{name} is {n}; it must be a whole number from {lo} to {hi}"),
                )),
            },
            Some(v) => Err(ApiError::bad(
                name,
                format!("{name} must be an integer, not {}", kind(v)),
            )),
        }
    }

    /// `stop`: a string or a list of up to four strings.
    pub fn stops(&self) -> Result<Vec<String>, ApiError> {
        let bad = || ApiError::bad("stop", "stop must be a string or a list of up to 4 strings");
        match self.get("stop") {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) if a.len() <= 4 => a
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
                .collect(),
            Some(_) => Err(bad()),
        }
    }

    /// Chat `messages`: a non-empty list of `{role, content}`; content is a string or a list of
    /// text parts.
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        let Some(Value::Array(list)) = self.get("messages") else {
            return Err(ApiError::bad(
                "messages",
                "messages must be a non-empty list of {role, content} objects",
            ));
        };
        if list.is_empty() {
            return Err(ApiError::bad("messages", "messages is empty"));
        }
        list.iter()
            .enumerate()
            .map(|(i, m)| {
                let param = format!("messages[{i}]");
                let role = match m.get("role").and_then(Value::as_str) {
                    Some("system" | "developer") => Role::System,
                    Some("user") => Role::User,
                    Some("assistant") => Role::Assistant,
                    Some(r) => return Err(ApiError::bad(&param, format!("{param}.role {r:?} is not system, user or assistant"))),
                    None => return Err(ApiError::bad(&param, format!("{param} needs a role (a string)"))),
                };
                let content = match m.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => Ok(t.to_string()),
                            _ => Err(ApiError::bad(&param, format!("{param}.content parts must be {{\"type\": \"text\", \"text\": ...}}"))),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .join(""),
                    Some(Value::Null) | None if role == Role::Assistant => String::new(),
                    _ => return Err(ApiError::bad(&param, format!("{param}.content must be a string"))),
                };
                Ok(Message { role, content })
            })
            .collect()
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
