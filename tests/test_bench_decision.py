"""``bench.decision``: its rule sets are what it says, and every measured decision is a
redirect (a benchmark that measures an error page measures nothing)."""

from __future__ import annotations

from bench import decision


def test_the_answering_rule_is_the_400th_of_500() -> None:
    text = decision.rules(500, answer_at=400)
    rules = [line for line in text.splitlines() if line.startswith("RewriteRule")]
    assert len(rules) == 500
    assert rules[399].startswith("RewriteRule ^/answer/")


def test_every_case_is_measured_and_redirects_to_a_site() -> None:
    results = decision.measure(count=5, rounds=1)
    assert set(results) == {
        (sites, rules, kind)
        for sites in (3, 1000)
        for rules in (0, 50, 500)
        for kind in (("unanswered",) if rules == 0 else ("unanswered", "answered"))
    }
    assert all(cost > 0 for cost in results.values())
    lines = decision.report(results)
    assert any("500 / 50 rules, 1000 sites, answered" in line for line in lines)
    dispatch = decision.core(1000, 500)
    status, headers, _ = decision.decision(dispatch, decision.ANSWERED)()
    assert status == 302
    assert dict(headers)[b"location"].startswith(b"http://s")
