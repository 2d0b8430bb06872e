//! DNS resolution: the resolver the prober and the ownership checks share ([`resolver`]), and
//! TXT lookups for domain verification ([`HickoryTxt`], the engine's `TxtLookup` port).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tranche_actors::ports::TxtLookup;
use tranche_core::verify::Lookup;

/// A DNS resolver: through `servers` (UDP, then TCP) when given, else the system's
/// configuration (`None`, logged, when there is none). `fresh` sets a short per-query timeout
/// and turns the answer cache off (ownership checks must see what is published now).
pub fn resolver(
    servers: &[SocketAddr],
    fresh: Option<std::time::Duration>,
) -> anyhow::Result<Option<hickory_resolver::TokioResolver>> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut builder = if servers.is_empty() {
        match hickory_resolver::TokioResolver::builder_tokio() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no system DNS configuration; only IP-literal targets will resolve");
                return Ok(None);
            }
        }
    } else {
        let name_servers = servers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        hickory_resolver::TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
    };
    if let Some(t) = fresh {
        let options = builder.options_mut();
        options.timeout = t;
        options.attempts = 2;
        options.cache_size = 0;
    }
    Ok(Some(builder.build()?))
}

/// TXT lookups with hickory-resolver: the system's resolver configuration, or the given
/// nameservers (UDP, then TCP).
pub struct HickoryTxt {
    resolver: Option<TokioResolver>,
}

impl HickoryTxt {
    pub fn new(nameservers: &[SocketAddr]) -> anyhow::Result<Self> {
        Ok(Self {
            resolver: resolver(nameservers, Some(Duration::from_secs(2)))?,
        })
    }
}

#[async_trait::async_trait]
impl TxtLookup for HickoryTxt {
    async fn txt(&self, name: &str) -> Lookup {
        let Some(resolver) = &self.resolver else {
            return Lookup::Error("no DNS resolver configured".into());
        };
        match resolver.txt_lookup(format!("{name}.")).await {
            Ok(lookup) => {
                let records: Vec<Vec<String>> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        hickory_resolver::proto::rr::RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s).into_owned())
                                .collect(),
                        ),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    Lookup::Missing
                } else {
                    Lookup::Records(records)
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Lookup::Missing,
            Err(e) => Lookup::Error(e.to_string()),
        }
    }
}
