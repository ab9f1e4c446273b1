//! Chat templates: the model's own Jinja template (`tokenizer.chat_template`
//! in GGUF, `chat_template` in `tokenizer_config.json`) rendered with
//! minijinja, configured the way Hugging Face's `apply_chat_template` sets up
//! Jinja, so the prompt text is the one the model was trained on.

use std::collections::BTreeMap;

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, context};

use super::TokenizerError;

const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or whatever else the template accepts.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template and the special-token strings it may reference.
pub(super) struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`. Templates come from model files, so a syntax error
    /// is reported at load time, not on the first request.
    pub(super) fn new(
        source: String,
        bos_token: Option<String>,
        eos_token: String,
    ) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        // Hugging Face renders with trim_blocks and lstrip_blocks on and the
        // loopcontrols extension; templates are written against that.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TokenizerError::TemplateSyntax {
                reason: e.to_string(),
            })?;
        env.set_syntax(syntax);
        // Prompts are plain text, never HTML.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // Python string and dict methods (`.strip()`, `.startswith()`,
        // `.items()`, ...) that HF templates call.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source).map_err(|e| {
            TokenizerError::TemplateSyntax {
                reason: e.to_string(),
            }
        })?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
        })
    }

    pub(super) fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let render_err = |e: Error| TokenizerError::TemplateRender {
            reason: e.to_string(),
        };
        let template = self.env.get_template(TEMPLATE_NAME).map_err(render_err)?;
        let bos_token = match &self.bos_token {
            Some(s) => Value::from(s.as_str()),
            None => Value::UNDEFINED,
        };
        let ctx = context! {
            messages => messages_value(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => self.eos_token.as_str(),
        };
        template.render(ctx).map_err(render_err)
    }
}

/// `raise_exception(msg)`, which HF templates call to reject a conversation
/// (e.g. roles that do not alternate).
fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn messages_value(messages: &[ChatMessage]) -> Value {
    messages
        .iter()
        .map(|m| {
            let mut map = BTreeMap::new();
            map.insert("role", Value::from(m.role.as_str()));
            map.insert("content", Value::from(m.content.as_str()));
            Value::from(map)
        })
        .collect()
}

/// The ChatML rendering used when a model ships no template: the format of
/// SmolLM2, Qwen and many other instruction-tuned models.
pub(super) fn render_chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}
