//! Broker addresses: one AMQP URI, or several separated by commas (the nodes of a RabbitMQ
//! cluster), as the operator, the workers and the CLI take them in `WARREN_AMQP_URL`.
//!
//! A client tries the addresses in turn, starting at a random one (so that a pool's workers
//! spread over the nodes), and moves on to the next address on every failure; one pass over all
//! addresses is one connection attempt, so the existing backoff applies between passes. One
//! address that balances over the nodes (a Kubernetes Service) is the other way and needs
//! nothing here. A comma inside a URI (in a password) must be percent-encoded as `%2C`.

/// Most addresses in one list: a cluster has a handful of nodes; a longer list is a mistake.
pub const MAX_ADDRESSES: usize = 16;

/// How long one connection attempt to one address may take (TCP, TLS and the AMQP handshake): a
/// broker that accepts the socket but never answers must not hold up the next address.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("no broker address given")]
    Empty,
    #[error("broker address {index} ({address}) is not an amqp:// or amqps:// URI")]
    Scheme { index: usize, address: String },
    #[error("{count} broker addresses given; at most {MAX_ADDRESSES}")]
    TooMany { count: usize },
}

/// Splits a comma-separated list into its URIs (blank entries ignored) and checks each scheme.
pub fn parse(list: &str) -> Result<Vec<String>, AddressError> {
    let addresses: Vec<String> = list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    if addresses.is_empty() {
        return Err(AddressError::Empty);
    }
    if addresses.len() > MAX_ADDRESSES {
        return Err(AddressError::TooMany { count: addresses.len() });
    }
    for (index, address) in addresses.iter().enumerate() {
        if !(address.starts_with("amqp://") || address.starts_with("amqps://")) {
            return Err(AddressError::Scheme { index, address: redact(address) });
        }
    }
    Ok(addresses)
}

/// The order in which to try `count` addresses, starting at `start` (wrapped).
pub fn order(count: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |i| (start + i) % count.max(1))
}

/// A URI, or a list of them, with every password replaced by `***`: safe for logs and errors.
pub fn redact(list: &str) -> String {
    list.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_on_commas_and_blank_entries_are_ignored() {
        assert_eq!(parse("amqp://a:5672").unwrap(), vec!["amqp://a:5672"]);
        assert_eq!(
            parse(" amqp://u:p@a:5672/%2f , amqps://u:p@b:5671/%2f,,").unwrap(),
            vec!["amqp://u:p@a:5672/%2f", "amqps://u:p@b:5671/%2f"]
        );
        assert_eq!(parse(" , "), Err(AddressError::Empty));
        let long = vec!["amqp://a"; MAX_ADDRESSES + 1].join(",");
        assert_eq!(parse(&long), Err(AddressError::TooMany { count: MAX_ADDRESSES + 1 }));
    }

    #[test]
    fn a_bad_scheme_names_the_entry_without_its_password() {
        let err = parse("amqp://a,http://u:secret@b").unwrap_err();
        assert_eq!(err, AddressError::Scheme { index: 1, address: "http://u:***@b".into() });
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn every_address_is_tried_once_from_the_start() {
        assert_eq!(order(3, 1).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(order(3, 7).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(order(1, 5).collect::<Vec<_>>(), vec![0]);
        assert_eq!(order(0, 5).count(), 0);
    }

    #[test]
    fn passwords_are_redacted_in_every_address() {
        assert_eq!(redact("amqp://warren:s3cret@rmq:5672/%2f"), "amqp://warren:***@rmq:5672/%2f");
        assert_eq!(redact("amqp://a:x@n1,amqp://b:y@n2"), "amqp://a:***@n1,amqp://b:***@n2");
        assert_eq!(redact("amqp://n1:5672"), "amqp://n1:5672");
    }
}
