"""The answers rendered through dnspython: SOA, NS and ANY at a zone's apex.

These are rare (resolvers ask for them when they first meet the zone) and have more
structure (the NS glue), so they are built as dnspython messages and rendered with its
truncation rules rather than spliced from bytes like the answers of the hot path.
"""

from __future__ import annotations

import dns.edns
import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from dispatcher.dns.message import AA, CD, DO, NS, QR, RD, TC, Query
from dispatcher.dns.names import is_within, to_text
from dispatcher.dns.table import DnsTable, Zone


def apex_answer(table: DnsTable, zone: Zone, query: Query, limit: int) -> bytes:
    """The SOA (for SOA and ANY) or the NS records (with glue) of ``zone``; an empty
    truncated answer in the unlikely case dnspython cannot render within ``limit``."""
    config = table.config
    message = dns.message.Message(id=query.ident)
    message.flags = QR | (query.flags & (0x7800 | RD | CD)) | AA
    qname = dns.name.from_wire(query.question, 0)[0]
    apex = to_text(zone.apex)
    message.question = [
        dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.RdataType.make(query.qtype))
    ]
    if query.qtype == NS:
        targets = [to_text(ns) for ns in config.ns]
        message.answer = [dns.rrset.from_text_list(apex, config.soa.ttl, "IN", "NS", targets)]
        message.additional = _glue(table, zone)
    else:
        soa = config.soa
        text = (
            f"{to_text(soa.mname)} {to_text(soa.rname)} {zone.serial} {soa.refresh}"
            f" {soa.retry} {soa.expire} {soa.minimum}"
        )
        message.answer = [dns.rrset.from_text_list(apex, soa.ttl, "IN", "SOA", [text])]
    if query.edns:
        options: list[dns.edns.Option] = []
        if query.ecs is not None:
            body = query.ecs.option(0)[4:]
            options.append(dns.edns.GenericOption(dns.edns.OptionType.ECS, body))
        message.use_edns(0, DO if query.do else 0, payload=config.max_udp_payload, options=options)
    try:
        return message.to_wire(max_size=limit, prefer_truncation=True)
    except dns.exception.DNSException:
        message.answer, message.additional = [], []
        message.flags |= TC
        return message.to_wire(max_size=max(limit, 512))


def _glue(table: DnsTable, zone: Zone) -> list[dns.rrset.RRset]:
    """The addresses of the zone's name servers that are inside it and configured with
    fixed addresses (without glue, a resolver could not reach them)."""
    glue: list[dns.rrset.RRset] = []
    for ns in table.config.ns:
        entry = table.names.get(ns)
        if entry is None or entry.pool is not None or not is_within(ns, zone.apex):
            continue
        owner, ttl = to_text(ns), entry.config.ttl.high
        v4 = [a for a in entry.config.addresses if ":" not in a]
        v6 = [a for a in entry.config.addresses if ":" in a]
        if v4:
            glue.append(dns.rrset.from_text_list(owner, ttl, "IN", "A", v4))
        if v6:
            glue.append(dns.rrset.from_text_list(owner, ttl, "IN", "AAAA", v6))
    return glue
