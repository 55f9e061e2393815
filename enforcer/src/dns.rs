//! Names for external peers, learned from the DNS answers pods receive: address -> the
//! name the pod asked for, for as long as the answer's TTL allows.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use simple_dns::{Packet, rdata::RData};

/// At most this many addresses are remembered; the entry expiring first goes first.
const CAPACITY: usize = 65_536;
/// Answers with a TTL of 0 may not be cached, but the connection that follows them comes
/// within moments: keep them that long.
const MIN_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct DnsCache {
    names: HashMap<IpAddr, (String, Instant)>,
}

impl DnsCache {
    /// Learn from one DNS message (a TCP message starts with its 2-byte length). Returns
    /// how many addresses it named; a message that is not an answer names none.
    pub fn learn(&mut self, message: &[u8], tcp: bool, now: Instant) -> usize {
        let message = if tcp {
            message.get(2..).unwrap_or_default()
        } else {
            message
        };
        let Ok(packet) = Packet::parse(message) else {
            return 0;
        };
        let Some(question) = packet.questions.first() else {
            return 0;
        };
        let asked = question.qname.to_string();
        let mut named = 0;
        for answer in &packet.answers {
            let ip = match &answer.rdata {
                RData::A(a) => IpAddr::from(a.address.to_be_bytes()),
                RData::AAAA(a) => IpAddr::from(a.address.to_be_bytes()),
                _ => continue,
            };
            let ttl = Duration::from_secs(u64::from(answer.ttl)).max(MIN_TTL);
            self.insert(ip, asked.clone(), now + ttl);
            named += 1;
        }
        named
    }

    /// The name an address was last answered for, if the answer is still valid.
    pub fn name_of(&self, ip: IpAddr, now: Instant) -> Option<&str> {
        self.names
            .get(&ip.to_canonical())
            .filter(|(_, expiry)| *expiry > now)
            .map(|(name, _)| name.as_str())
    }

    fn insert(&mut self, ip: IpAddr, name: String, expiry: Instant) {
        if self.names.len() >= CAPACITY && !self.names.contains_key(&ip) {
            let now = Instant::now();
            self.names.retain(|_, (_, e)| *e > now);
            if self.names.len() >= CAPACITY
                && let Some(first) = self
                    .names
                    .iter()
                    .min_by_key(|(_, (_, e))| *e)
                    .map(|(k, _)| *k)
            {
                self.names.remove(&first);
            }
        }
        self.names.insert(ip.to_canonical(), (name, expiry));
    }
}

#[cfg(test)]
mod tests {
    use simple_dns::{CLASS, Name, QCLASS, QTYPE, Question, ResourceRecord, TYPE, rdata};

    use super::*;

    fn answer(name: &str, ttl: u32, addrs: &[IpAddr]) -> Vec<u8> {
        let mut reply = Packet::new_reply(7);
        reply.questions.push(Question::new(
            Name::new(name).unwrap(),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        for addr in addrs {
            let data = match addr {
                IpAddr::V4(v4) => RData::A(rdata::A {
                    address: u32::from(*v4),
                }),
                IpAddr::V6(v6) => RData::AAAA(rdata::AAAA {
                    address: u128::from(*v6),
                }),
            };
            reply.answers.push(ResourceRecord::new(
                Name::new(name).unwrap(),
                CLASS::IN,
                ttl,
                data,
            ));
        }
        reply.build_bytes_vec().unwrap()
    }

    #[test]
    fn answers_name_their_addresses_until_the_ttl_ends() {
        let mut cache = DnsCache::default();
        let now = Instant::now();
        let v4: IpAddr = "203.0.113.10".parse().unwrap();
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        assert_eq!(
            cache.learn(&answer("api.example.com", 60, &[v4, v6]), false, now),
            2
        );
        assert_eq!(cache.name_of(v4, now), Some("api.example.com"));
        assert_eq!(cache.name_of(v6, now), Some("api.example.com"));
        assert_eq!(cache.name_of(v4, now + Duration::from_secs(61)), None);
    }

    #[test]
    fn tcp_messages_carry_a_length_prefix_and_garbage_names_nothing() {
        let mut cache = DnsCache::default();
        let now = Instant::now();
        let message = answer("db.example.net", 0, &["198.51.100.7".parse().unwrap()]);
        let mut framed = (message.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&message);
        assert_eq!(cache.learn(&framed, true, now), 1);
        // A TTL of 0 is kept briefly, for the connection that follows the lookup.
        assert!(
            cache
                .name_of("198.51.100.7".parse().unwrap(), now)
                .is_some()
        );
        assert_eq!(cache.learn(b"not dns at all", false, now), 0);
        assert_eq!(cache.learn(&[], true, now), 0);
    }
}
