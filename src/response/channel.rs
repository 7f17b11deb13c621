//! Notification channels: `log` (always there: records and logs the message), `webhook` (a Slack
//! incoming webhook: `POST` of `{"text": ...}`) and `email` (SMTP through lettre). Each delivery
//! either succeeds, fails in a way worth retrying, or fails for good, like a session reset.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::notify::Notification;
use super::reset::{describe, http_error};
use super::CallError;

/// How an SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (a local relay only).
    None,
    /// STARTTLS on the submission port (default 587).
    Starttls,
    /// TLS from the start (default port 465).
    Tls,
}

/// Everything an `email` channel needs, resolved from the configuration.
#[derive(Clone, Debug)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: String,
    pub credentials: Option<(String, String)>,
    pub timeout: Duration,
}

/// A channel that delivers notifications.
pub enum Channel {
    Log(LogChannel),
    Webhook(WebhookChannel),
    Email(Box<EmailChannel>),
}

/// Records each message (and logs it) without sending anything.
#[derive(Default)]
pub struct LogChannel {
    sent: Mutex<Vec<String>>,
}

impl LogChannel {
    /// The ids of the messages delivered so far.
    pub fn sent(&self) -> Vec<String> {
        self.sent.lock().expect("log channel poisoned").clone()
    }
}

/// Posts to a Slack incoming webhook.
pub struct WebhookChannel {
    client: reqwest::Client,
    url: String,
}

impl WebhookChannel {
    pub fn new(url: &str, timeout: Duration) -> Result<WebhookChannel, reqwest::Error> {
        Ok(WebhookChannel {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .user_agent(concat!("aer/", env!("CARGO_PKG_VERSION")))
                .build()?,
            url: url.to_string(),
        })
    }
}

/// Sends mail over SMTP.
pub struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl EmailChannel {
    pub fn new(settings: &EmailSettings) -> Result<EmailChannel, String> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| format!("from address {:?}: {e}", settings.from))?;
        let builder = match settings.tls {
            SmtpTls::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            }
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host)
                    .map_err(|e| format!("SMTP host {:?}: {e}", settings.host))?
            }
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host)
                .map_err(|e| format!("SMTP host {:?}: {e}", settings.host))?,
        };
        let mut builder = builder.port(settings.port).timeout(Some(settings.timeout));
        if let Some((user, password)) = &settings.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(EmailChannel {
            transport: builder.build(),
            from,
        })
    }
}

impl Channel {
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Log(_) => "log",
            Channel::Webhook(_) => "webhook",
            Channel::Email(_) => "email",
        }
    }

    pub async fn deliver(&self, n: &Notification) -> Result<(), CallError> {
        match self {
            Channel::Log(log) => {
                tracing::info!(
                    notification_id = %n.id,
                    enterprise = %n.enterprise,
                    role = ?n.recipient.role,
                    recipient = %n.recipient.address,
                    kind = ?n.kind,
                    items = n.items.len(),
                    subject = %n.subject,
                    "notification (log channel)"
                );
                log.sent
                    .lock()
                    .expect("log channel poisoned")
                    .push(n.id.clone());
                Ok(())
            }
            Channel::Webhook(hook) => {
                let body = serde_json::json!({
                    "text": format!("*{}*\n{}", n.subject, n.text),
                });
                let response = hook
                    .client
                    .post(&hook.url)
                    .header("X-Aer-Notification-Id", &n.id)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| {
                        http_error(e.status(), None, format!("webhook: {}", describe(&e)))
                    })?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    let headers = response.headers().clone();
                    let text = response.text().await.unwrap_or_default();
                    Err(http_error(
                        Some(status),
                        Some(&headers),
                        format!("webhook: HTTP {status} {}", text.trim()),
                    ))
                }
            }
            Channel::Email(mail) => {
                let to: Mailbox = n.recipient.address.parse().map_err(|e| {
                    CallError::Permanent(format!("bad address {:?}: {e}", n.recipient.address))
                })?;
                let message = Message::builder()
                    .from(mail.from.clone())
                    .to(to)
                    .subject(n.subject.clone())
                    .message_id(Some(format!("<{}@aer>", n.id)))
                    .body(n.text.clone())
                    .map_err(|e| CallError::Permanent(format!("cannot build mail: {e}")))?;
                match mail.transport.send(message).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.is_permanent() => Err(CallError::Permanent(format!("smtp: {e}"))),
                    Err(e) => Err(CallError::Retryable {
                        message: format!("smtp: {e}"),
                        retry_after: None,
                    }),
                }
            }
        }
    }
}

/// The configured channels by name; `log` is always present.
pub struct Channels {
    by_name: BTreeMap<String, Channel>,
}

impl Default for Channels {
    fn default() -> Self {
        let mut by_name = BTreeMap::new();
        by_name.insert("log".to_string(), Channel::Log(LogChannel::default()));
        Channels { by_name }
    }
}

impl Channels {
    /// Adds (or replaces) a named channel.
    pub fn insert(&mut self, name: &str, channel: Channel) {
        self.by_name.insert(name.to_string(), channel);
    }

    pub fn get(&self, name: &str) -> Option<&Channel> {
        self.by_name.get(name)
    }

    /// The built-in `log` channel.
    pub fn log(&self) -> Option<&LogChannel> {
        match self.by_name.get("log") {
            Some(Channel::Log(log)) => Some(log),
            _ => None,
        }
    }

    pub async fn deliver(&self, n: &Notification) -> Result<(), CallError> {
        match self.get(&n.recipient.channel) {
            Some(channel) => channel.deliver(n).await,
            None => Err(CallError::Permanent(format!(
                "no channel named {:?}",
                n.recipient.channel
            ))),
        }
    }
}
