//! client-go as the doubles need it: calls to the apiserver double with
//! errors worded the way Go's HTTP client and client-go word them.

use serde_json::Value;

use crate::kube::http::{CallError, Client, Reply};

/// Why an API call failed.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// No HTTP answer: Go's `Get "https://...": dial tcp ...` text.
    Transport { text: String, refused: bool },
    /// An HTTP error status with the Status message.
    Status {
        code: u16,
        reason: String,
        message: String,
    },
}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { code: 404, .. })
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, ApiError::Status { code: 409, .. })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Transport { text, .. } => f.write_str(text),
            ApiError::Status { code: 401, .. } => f.write_str("Unauthorized"),
            ApiError::Status { message, .. } => f.write_str(message),
        }
    }
}

fn go_method(m: &str) -> String {
    let mut c = m.chars();
    match c.next() {
        Some(f) => f.to_string() + &c.as_str().to_lowercase(),
        None => String::new(),
    }
}

pub fn call(c: &Client, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
    match c.call(method, path, body) {
        Ok(Reply { status, body }) if (200..300).contains(&status) => {
            Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
        }
        Ok(r) => Err(ApiError::Status {
            code: r.status,
            reason: r.reason(),
            message: r.message(),
        }),
        Err(e) => {
            let refused = matches!(&e, CallError::Connect(_, d) if d.contains("refused"));
            Err(ApiError::Transport {
                text: format!("{} \"{}{}\": {}", go_method(method), c.server, path, e),
                refused,
            })
        }
    }
}

pub fn get(c: &Client, path: &str) -> Result<Value, ApiError> {
    call(c, "GET", path, None)
}

pub fn put(c: &Client, path: &str, body: &Value) -> Result<Value, ApiError> {
    call(c, "PUT", path, Some(body))
}

pub fn post(c: &Client, path: &str, body: &Value) -> Result<Value, ApiError> {
    call(c, "POST", path, Some(body))
}

pub fn delete(c: &Client, path: &str) -> Result<Value, ApiError> {
    call(c, "DELETE", path, None)
}

/// A Secret's `data[key]` decoded.
pub fn secret_field(s: &Value, key: &str) -> Option<Vec<u8>> {
    s["data"][key].as_str().and_then(crate::kube::unb64)
}

pub fn secret_text(s: &Value, key: &str) -> String {
    secret_field(s, key)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
