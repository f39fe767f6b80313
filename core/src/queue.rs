//! RabbitMQ: a durable quorum queue of deployment ids and its dead-letter queue.
//!
//! A message carries only a deployment id; PostgreSQL holds everything else. Messages
//! are persistent, publishing waits for the broker's confirm, and consumers acknowledge
//! by hand, so a message is gone from the broker only once its outcome is stored.

use crate::config::QueueConfig;
use lapin::Confirmation;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::time::Duration;
use tokio::sync::Mutex;
use uuid::Uuid;

/// How long a connect or a confirm may take before the broker counts as unavailable.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("message broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("message broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("message broker refused the message (nack)")]
    Nacked,
}

async fn within<T>(f: impl Future<Output = Result<T, lapin::Error>>) -> Result<T, QueueError> {
    match tokio::time::timeout(BROKER_TIMEOUT, f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(QueueError::Timeout(BROKER_TIMEOUT)),
    }
}

/// Opens a connection and a channel, and declares the queue and its dead-letter queue
/// (declaring is idempotent, so publishers and consumers both do it).
pub async fn open(config: &QueueConfig) -> Result<(Connection, Channel), QueueError> {
    let connection = within(Connection::connect(config.url.expose(), ConnectionProperties::default())).await?;
    let channel = within(connection.create_channel()).await?;
    declare(&channel, config).await?;
    Ok((connection, channel))
}

fn dead_letter_queue(config: &QueueConfig) -> String {
    format!("{}.dead", config.queue)
}

async fn declare(channel: &Channel, config: &QueueConfig) -> Result<(), QueueError> {
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let mut dead_args = FieldTable::default();
    dead_args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    within(channel.queue_declare(dead_letter_queue(config).as_str().into(), durable, dead_args)).await?;

    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from("")));
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(dead_letter_queue(config).as_str())),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongUInt(config.delivery_limit));
    within(channel.queue_declare(config.queue.as_str().into(), durable, args)).await?;
    Ok(())
}

/// Publishes deployment ids with publisher confirms, reconnecting as needed.
#[derive(Debug)]
pub struct Publisher {
    config: QueueConfig,
    link: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    /// Does not connect: the first publish does, so the API starts while the broker is
    /// down (accepted deployments wait in the outbox).
    pub fn new(config: QueueConfig) -> Self {
        Self { config, link: Mutex::new(None) }
    }

    /// Publishes ids and waits until the broker confirmed every one: sent together,
    /// confirmed together, so a batch costs about one round trip. On an error, some
    /// may have been stored: publishing again makes duplicates, which the claim absorbs.
    pub async fn publish(&self, ids: &[Uuid]) -> Result<(), QueueError> {
        let mut link = self.link.lock().await;
        let result = self.publish_on(&mut link, ids).await;
        if result.is_err() {
            // A broken channel stays broken: start over on the next publish.
            *link = None;
        }
        result
    }

    async fn publish_on(&self, link: &mut Option<(Connection, Channel)>, ids: &[Uuid]) -> Result<(), QueueError> {
        if link.as_ref().is_none_or(|(connection, _)| !connection.status().connected()) {
            let (connection, channel) = open(&self.config).await?;
            within(channel.confirm_select(ConfirmSelectOptions::default())).await?;
            *link = Some((connection, channel));
        }
        let Some((_, channel)) = link.as_ref() else {
            return Err(QueueError::Timeout(BROKER_TIMEOUT));
        };
        let mut confirms = Vec::with_capacity(ids.len());
        for id in ids {
            let body = id.to_string();
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(ShortString::from("text/plain"))
                .with_message_id(ShortString::from(body.as_str()));
            confirms.push(
                within(channel.basic_publish(
                    ShortString::from(""),
                    self.config.queue.as_str().into(),
                    BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                    body.as_bytes(),
                    properties,
                ))
                .await?,
            );
        }
        for confirm in confirms {
            match within(confirm).await? {
                Confirmation::Ack(None) => {}
                // Unroutable (returned) or refused: not stored by the broker.
                Confirmation::Ack(Some(_)) | Confirmation::Nack(_) | Confirmation::NotRequested => {
                    return Err(QueueError::Nacked);
                }
            }
        }
        Ok(())
    }

    /// Whether the last publish left a live connection (for readiness).
    pub async fn is_connected(&self) -> bool {
        let link = self.link.lock().await;
        link.as_ref().is_some_and(|(connection, _)| connection.status().connected())
    }

    /// Connects if needed, without publishing (for readiness).
    pub async fn check(&self) -> Result<(), QueueError> {
        let mut link = self.link.lock().await;
        if link.as_ref().is_some_and(|(connection, _)| connection.status().connected()) {
            return Ok(());
        }
        let (connection, channel) = open(&self.config).await?;
        within(channel.confirm_select(ConfirmSelectOptions::default())).await?;
        *link = Some((connection, channel));
        Ok(())
    }

    pub async fn close(&self) {
        if let Some((connection, _)) = self.link.lock().await.take() {
            let _ = connection.close(200, "shutting down".into()).await;
        }
    }
}

/// Starts consuming with manual acknowledgements and `prefetch` unacknowledged
/// messages at most.
pub async fn consume(
    channel: &Channel,
    config: &QueueConfig,
    prefetch: u16,
    tag: &str,
) -> Result<Consumer, QueueError> {
    within(channel.basic_qos(prefetch, BasicQosOptions::default())).await?;
    within(channel.basic_consume(
        config.queue.as_str().into(),
        tag.into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
}

/// Parses a message body into a deployment id.
pub fn deployment_id(body: &[u8]) -> Option<Uuid> {
    std::str::from_utf8(body).ok().and_then(|s| Uuid::parse_str(s.trim()).ok())
}
