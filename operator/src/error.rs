//! The operator's one error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("{0}")]
    Invalid(String),
    /// A claim with the Registry's volume name exists but was not created for it.
    #[error("PersistentVolumeClaim {0} exists and does not belong to this Registry; it is left alone")]
    ForeignClaim(String),
    /// A ServiceAccount with the registry's account name exists but was not created for it.
    #[error("ServiceAccount {0} exists and does not belong to this Registry; it is not bound or used")]
    ForeignAccount(String),
    /// A Service with one of the Registry's Service names exists and another
    /// object controls it: Registry `a`'s metrics Service is `a-metrics`.
    #[error(
        "Service {0} exists and another object controls it; it is left alone (a Registry named a has the metrics Service a-metrics)"
    )]
    ForeignService(String),
    /// A ServiceMonitor with the Registry's name exists that it does not control
    /// (a user's own, say): applying over it would take it over.
    #[error("ServiceMonitor {0} exists and this Registry does not control it; it is left alone")]
    ForeignServiceMonitor(String),
    /// Without a complete list of Pods the images in use are unknown.
    #[error("the Pods of the cluster could not be listed; no protected images are published until they are")]
    PodsNotListed,
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Invalid(_) => "invalid",
            Error::ForeignClaim(_) => "foreign_claim",
            Error::ForeignAccount(_) => "foreign_account",
            Error::ForeignService(_) => "foreign_service",
            Error::ForeignServiceMonitor(_) => "foreign_service_monitor",
            Error::PodsNotListed => "pods_not_listed",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
