"""Countries and continents, as data: every ISO 3166-1 alpha-2 code and its continent.

The continent of a country is its UN M49 region, with the Americas split into North
America (Central America and the Caribbean included) and South America, and Antarctica
with the uninhabited southern islands (AQ, BV, GS, HM, TF) as ``AN``. The codes are the
249 officially assigned ones; ``tests/test_countries.py`` checks them against pycountry.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: The seven continent codes (as MaxMind's databases spell them).
CONTINENTS = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})

_BY_CONTINENT = {
    "AF": """AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW IO KE KM LR
             LS LY MA MG ML MR MU MW MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ
             UG YT ZA ZM ZW""",
    "AN": "AQ BV GS HM TF",
    "AS": """AE AF AM AZ BD BH BN BT CN CY GE HK ID IL IN IQ IR JO JP KG KH KP KR KW KZ LA LB
             LK MM MN MO MV MY NP OM PH PK PS QA SA SG SY TH TJ TL TM TR TW UZ VN YE""",
    "EU": """AD AL AT AX BA BE BG BY CH CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT
             JE LI LT LU LV MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA""",
    "NA": """AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ
             MS MX NI PA PM PR SV SX TC TT US VC VG VI""",
    "OC": "AS AU CC CK CX FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TO TV UM VU WF WS",
    "SA": "AR BO BR CL CO EC FK GF GY PE PY SR UY VE",
}

#: ISO 3166-1 alpha-2 code -> continent code.
CONTINENT_OF: Mapping[str, str] = MappingProxyType(
    {code: continent for continent, codes in _BY_CONTINENT.items() for code in codes.split()}
)

#: Every officially assigned ISO 3166-1 alpha-2 code (upper case).
COUNTRIES = frozenset(CONTINENT_OF)

_CANONICAL = {code: code for code in CONTINENT_OF}

#: Codes the Regional Internet Registries use for blocks of a whole region, not a country:
#: they give a continent and no country.
REGION_CODES: Mapping[str, str] = MappingProxyType({"EU": "EU", "AP": "AS"})


def country_and_continent(code: object) -> tuple[str | None, str | None]:
    """``(country, continent)`` for a code a database gave (any object: databases are
    not trusted): an ISO country and its continent, a registry's region code's continent
    alone, or ``(None, None)``."""
    if not isinstance(code, str) or len(code) != 2:
        return None, None
    upper = _CANONICAL.get(code.upper())  # the table's own string: one object per code
    if upper is None:
        return None, REGION_CODES.get(code.upper())
    return upper, CONTINENT_OF[upper]


__all__ = ["CONTINENTS", "CONTINENT_OF", "COUNTRIES", "REGION_CODES", "country_and_continent"]
