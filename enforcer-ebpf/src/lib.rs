//! Palisade's datapath logic, shared by the kernel programs and host unit tests.
//!
//! Everything here is `no_std` and free of BPF helpers: packet bytes are read through the
//! [`packet::Packet`] trait, which the kernel implements over an `skb` and tests over a byte
//! slice, so the exact code the verifier loads is the code the tests run.
//!
//! # Layout
//! - [`packet`]: the `Packet` byte-reader trait and its slice implementation.
//! - [`parse`]: Ethernet (VLAN), IPv4 (options, fragments), IPv6 (extension headers,
//!   fragments), TCP, UDP, SCTP, ICMP, ICMPv6 -> a classified [`parse::Parsed`] packet.
//! - [`flow`]: orienting a parsed packet to the pod (conntrack and deny keys), and which side
//!   opened a connection.
#![no_std]

pub mod flow;
pub mod packet;
pub mod parse;
