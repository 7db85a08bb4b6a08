//! Keystone's own API (v3), with the client's token: what `kuryr agent-credential`
//! needs to provision host-scoped agent credentials (roles, users, grants,
//! application credentials).

use reqwest::{Method, header};
use serde_json::Value;

use crate::client::{Client, identity_v3_url, transport_error};
use crate::error::ClientError;

impl Client {
    /// Keystone's v3 URL for these credentials (`None` for noauth).
    pub fn identity_url(&self) -> Option<String> {
        self.credentials().auth.auth_url().map(identity_v3_url)
    }

    /// A Keystone v3 call: `path` is relative to `/v3` (`/roles?name=x`). Returns the
    /// JSON body, `Value::Null` when empty (204). Keystone's errors become
    /// [`ClientError`]s as Neutron's do.
    pub async fn identity_request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let base = self.identity_url().ok_or_else(|| {
            ClientError::Config("these credentials have no Keystone (noauth)".into())
        })?;
        let url = format!("{base}{path}");
        let (http, token) = self.http_and_token().await?;
        let mut rb = http
            .request(method.clone(), &url)
            .header(header::ACCEPT, "application/json")
            .timeout(self.request_timeout());
        if let Some(t) = token {
            rb = rb.header("X-Auth-Token", t);
        }
        if let Some(b) = &body {
            rb = rb.json(b);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| transport_error(method.as_str(), &url, &e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(method.as_str(), &url, &e))?;
        if !status.is_success() {
            return Err(ClientError::from_response(status.as_u16(), &bytes));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("{method} {url}: body is not JSON: {e}")))
    }
}
