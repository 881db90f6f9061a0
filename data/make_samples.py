"""Generate the bundled sample datasets deterministically.

Usage: ``python data/make_samples.py [--out DIR] [--seed N]`` (defaults: this folder, seed 7).

Each text example is composed from hand-written phrase banks in which every sentence is written for
one label (or is neutral to the label), so the label is clearly implied by the text. The numeric
sample (pump sensor readings -> status) is drawn from a stated rule with some noise: vibration below
3.0 mm/s is ``normal``, below 6.0 ``warning``, else ``fault`` (see ``make_pump_readings``). Generation
is seeded, drops duplicates and balances the labels; see ``data/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 7
DOCS_PER_CELL = 14  # 4 categories x 3 risk levels x 14 = 168
TICKETS_PER_CELL = 20  # 4 intents x 2 urgencies x 20 = 160
REVIEWS_PER_LABEL = 60  # 3 labels x 60 = 180
MAX_DOC_WORDS = 60
MAX_SHORT_WORDS = 35

# --------------------------------------------------------------------------- documents

COMPANIES: list[tuple[str, str]] = [
    ("Northwind Foods", "frozen meals"),
    ("Bluepeak Appliances", "washing machines"),
    ("Carver Robotics", "warehouse robots"),
    ("Lumen Health", "home test kits"),
    ("Harbor Steel", "steel beams"),
    ("Greenleaf Retail", "garden furniture"),
    ("Orion Electronics", "laptops"),
    ("Maple Textiles", "cotton shirts"),
    ("Atlas Furniture", "office chairs"),
    ("Coral Cosmetics", "skin creams"),
    ("Falcon Motors", "electric scooters"),
    ("Brightwave Audio", "headphones"),
    ("Redwood Bikes", "bicycles"),
    ("Juniper Energy", "solar panels"),
    ("Keystone Toys", "board games"),
    ("Summit Outdoor", "hiking boots"),
    ("Pinecrest Glass", "windows"),
    ("Vertex Chips", "memory chips"),
]
"""(company, what it sells): a company is always paired with its own product."""
PERIODS = [
    "the first quarter",
    "the second quarter",
    "the third quarter",
    "the fourth quarter",
    "the first half",
    "the second half",
    "fiscal 2024",
]
REGIONS = ["Europe", "Canada", "Brazil", "Japan", "the Midwest", "Southeast Asia", "Mexico", "Australia"]

DOC_EVENTS: dict[str, dict[str, list[str]]] = {
    "growth": {
        "low": [
            "{co} reported revenue up {small_up}% year over year in {period}, driven by steady demand for its {product}.",
            "{co} opened {n} new sales offices in {region}, paid for entirely from existing cash.",
            "{co} signed a five-year contract with a major retailer, lifting its order book by {small_up}%.",
            "Subscriptions at {co} grew {small_up}% in {period}, and customer churn fell to a record low.",
            "{co} expanded its {product} business into {region}, where sales already cover the launch costs.",
        ],
        "medium": [
            "{co} grew revenue {mid_up}% in {period}, but its marketing spending rose even faster.",
            "{co} is doubling production of its {product} to meet strong demand, partly financed with new debt.",
            "{co} won {n} large contracts in {region} that lift sales by {mid_up}%, though most come from one buyer.",
            "Sales of {co}'s {product} rose {mid_up}% in {period} after a price cut that squeezed margins.",
        ],
        "high": [
            "{co} tripled its workforce in {period} to chase demand for its {product}, funded almost entirely by short-term loans.",
            "{co} entered {n} new countries at once, and sales jumped {big}% while the company burned through cash.",
            "{co} bought three rivals in {period} with borrowed money, doubling its size in six months.",
            "Revenue at {co} soared {big}% in {period} as it sold {product} below cost to win market share.",
        ],
    },
    "decline": {
        "low": [
            "Sales at {co} dipped {small}% in {period} as a few retailers ran down their stock.",
            "{co} lost one small customer in {region}, trimming revenue by about {small}%.",
            "Orders for {co}'s {product} slipped {small}% in {period} as buyers delayed minor purchases.",
            "{co}'s revenue edged down {small}% in {period}, its first small drop in three years.",
        ],
        "medium": [
            "{co}'s revenue fell {mid}% in {period} as competitors cut prices on {product}.",
            "{co} lost its second-largest customer, and profit dropped {mid}% in {period}.",
            "{co}'s market share in {product} shrank from {share_hi}% to {share_lo}% over the past year.",
            "Demand for {co}'s {product} in {region} fell {mid}% in {period}, and inventories are piling up.",
        ],
        "high": [
            "{co}'s revenue collapsed {big}% in {period} after its largest customer cancelled all orders.",
            "{co} reported a third straight quarterly loss as sales of its {product} fell {big}%.",
            "Sales at {co} have fallen {big}% since {period}, and the company is cutting a third of its staff.",
            "{co}'s {product} sales in {region} dropped {big}% in {period}, leaving it unable to cover fixed costs.",
        ],
    },
    "legal": {
        "low": [
            "{co} settled a minor trademark dispute over its {product} packaging for a small fee.",
            "A former supplier dropped its small claims case against {co} in {period}.",
            "Regulators in {region} completed a routine compliance review of {co} with no findings.",
            "{co} updated the wording of the warranty on its {product} after a consumer office asked for clearer terms.",
        ],
        "medium": [
            "{co} faces a patent lawsuit over its {product}, with damages of about ${amount} million claimed.",
            "Regulators in {region} opened an inquiry into {co}'s pricing of {product}.",
            "Customers filed a class action claiming {co} mislabelled its {product}.",
            "A court in {region} ruled that {co} must renegotiate several supplier contracts it had signed unlawfully.",
        ],
        "high": [
            "Regulators charged {co} with accounting fraud and could fine it up to {fine}% of annual revenue.",
            "A court ordered {co} to stop selling its {product} in {region} while a patent case is decided.",
            "Prosecutors in {region} raided {co}'s offices in {period} as part of a bribery investigation.",
            "{co} lost a lawsuit over its {product} and was ordered to pay ${amount_big} million in damages.",
        ],
    },
    "operations": {
        "low": [
            "{co} moved its {region} warehouse to a larger site over one weekend without delays.",
            "{co} upgraded its order system in {period}; a two-hour planned outage caused no lost sales.",
            "{co} switched to a new packaging supplier for its {product} to reduce shipping damage.",
            "{co} added a second shift at its {region} plant to shorten delivery times for {product}.",
        ],
        "medium": [
            "A parts shortage delayed about {mid}% of {co}'s {product} shipments in {period}.",
            "{co}'s main factory ran at reduced capacity for two weeks after a machine failure.",
            "Staff turnover at {co}'s {region} call centre reached {mid}% and customer wait times doubled.",
            "Port congestion in {region} held up {co}'s {product} deliveries for several weeks in {period}.",
        ],
        "high": [
            "A fire shut down {co}'s only factory, halting all production of its {product}.",
            "A cyberattack took {co}'s ordering and payment systems offline for {n} days in {period}.",
            "{co}'s only supplier of packaging for its {product} went bankrupt, and production has stopped.",
            "A strike at {co}'s {region} plants has halted all {product} deliveries with no end in sight.",
        ],
    },
}

DOC_DETAILS: dict[str, list[str]] = {
    "growth": [
        "The company plans to hire more sales staff next year.",
        "Management expects demand to keep rising.",
        "The board approved a larger budget for new markets.",
    ],
    "decline": [
        "Management blamed weaker consumer spending.",
        "The board has started a review of the product range.",
        "The company did not change its dividend for now.",
    ],
    "legal": [
        "The company disclosed the matter in its latest quarterly report.",
        "The company's general counsel briefed the board on the matter.",
        "The company declined to comment further on the matter.",
    ],
    "operations": [
        "The operations team shared the details in its monthly update.",
        "The company said customer orders remain its top priority.",
        "The chief operating officer is overseeing the work.",
    ],
}

DOC_RISK: dict[str, list[str]] = {
    "low": [
        "The financial impact is expected to be minimal.",
        "Management sees no threat to this year's targets.",
        "The company has ample cash and no debt, so analysts see little risk.",
        "Analysts called the effect small and well contained.",
        "The outlook for the year remains stable.",
    ],
    "medium": [
        "Management called it a moderate concern and is watching it closely.",
        "Analysts see a moderate risk to next year's profit.",
        "If the problem lasts another two quarters, profit targets could be missed.",
        "The company trimmed its profit forecast slightly as a precaution.",
        "Credit analysts flagged a moderate risk but kept their rating unchanged.",
    ],
    "high": [
        "Auditors warned that the situation threatens the company's survival.",
        "The company may breach its loan covenants and has hired restructuring advisers.",
        "Management warned the outcome could wipe out most of this year's profit.",
        "Its credit rating was cut to junk and its shares fell {drop}%.",
        "Analysts see a serious risk that the company runs out of cash within a year.",
    ],
}


def _fill(template: str, rng: random.Random) -> str:
    company, product = rng.choice(COMPANIES)
    values = {
        "co": company,
        "co_s": company + ("'" if company.endswith("s") else "'s"),
        "period": rng.choice(PERIODS),
        "region": rng.choice(REGIONS),
        "product": product,
        "n": rng.randint(3, 9),
        "small": rng.randint(1, 3),
        "small_up": rng.randint(4, 12),
        "mid": rng.randint(8, 18),
        "mid_up": rng.randint(15, 30),
        "big": rng.randint(35, 70),
        "share_hi": rng.randint(30, 40),
        "share_lo": rng.randint(20, 26),
        "amount": rng.randint(5, 40),
        "amount_big": rng.randint(300, 900),
        "fine": rng.choice([10, 20, 30]),
        "drop": rng.randint(30, 60),
        "month": rng.choice(["January", "March", "April", "June", "August", "October", "November"]),
        "plan": rng.choice(["Basic", "Pro", "Team", "Business"]),
        "price": rng.choice([19, 29, 49, 99, 149, 299]),
        "seats": rng.randint(12, 40),
        "users": rng.randint(3, 10),
        "doc": rng.choice(["report", "invoice", "project", "draft", "spreadsheet"]),
        "tool": rng.choice(["Google Calendar", "Outlook", "Slack", "Trello", "Notion"]),
        "product_r": rng.choice(REVIEW_PRODUCTS),
        "weeks": rng.randint(2, 8),
        "minutes": rng.randint(10, 30),
    }
    return template.replace("{co}'s", "{co_s}").format(**values)


def make_documents(rng: random.Random) -> list[dict[str, str]]:
    """Business report snippets labelled with ``category`` and ``risk_level``."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for category, by_risk in DOC_EVENTS.items():
        for risk, events in by_risk.items():
            count = 0
            for _ in range(10_000):
                parts = [_fill(rng.choice(events), rng)]
                if rng.random() < 0.5:
                    parts.append(rng.choice(DOC_DETAILS[category]))
                parts.append(_fill(rng.choice(DOC_RISK[risk]), rng))
                text = " ".join(parts)
                if text in seen or len(text.split()) > MAX_DOC_WORDS:
                    continue
                seen.add(text)
                rows.append({"document": text, "category": category, "risk_level": risk})
                count += 1
                if count == DOCS_PER_CELL:
                    break
            else:
                raise RuntimeError(f"could not make {DOCS_PER_CELL} unique documents for {category}/{risk}")
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------- tickets

TICKET_PROBLEMS: dict[str, dict[str, list[str]]] = {
    "billing": {
        "low": [
            "Could you send me a copy of my {month} invoice?",
            "I'd like to switch from monthly to yearly billing at my next renewal.",
            "Can you update the company address shown on our invoices?",
            "How do I add a purchase order number to future invoices?",
            "Which card is on file for our {plan} plan? I may update it next month.",
        ],
        "high": [
            "I was charged twice for the {plan} plan this month, ${price} each time.",
            "You charged my card ${price} after I cancelled my subscription last week.",
            "Our payment failed and the banner says the account will be suspended tonight.",
            "We were billed for {seats} seats but only have {users} users.",
        ],
    },
    "bug": {
        "low": [
            "The dark mode setting resets after I log out.",
            "There's a typo on the settings page: 'recieve' should be 'receive'.",
            "The export button icon looks blurry on my screen.",
            "The date picker starts weeks on Sunday even though I chose Monday.",
            "The tooltip on the {doc} list sometimes shows up in the wrong place.",
        ],
        "high": [
            "The app crashes every time I save a {doc}, and I have lost work twice today.",
            "Since this morning's update, none of our {users} users can upload files.",
            "The checkout page shows an error, so our customers cannot pay.",
            "Every {doc} disappeared from the dashboard after the latest update.",
        ],
    },
    "account": {
        "low": [
            "How do I change the email address on my account?",
            "I'd like to change my username.",
            "Can I add a second admin to our workspace?",
            "How do I turn on two-factor authentication?",
            "How can I change the time zone on my profile?",
        ],
        "high": [
            "I'm locked out of my account and the password reset email never arrives.",
            "Someone changed my password and I think my account was hacked.",
            "Our only admin left the company and nobody can access the workspace.",
            "My account was suspended by mistake and I can't reach any of my files.",
        ],
    },
    "feature_request": {
        "low": [
            "It would be nice to export reports as PDF.",
            "Could you add a dark theme to the mobile app?",
            "Please consider adding keyboard shortcuts to the editor.",
            "An integration with {tool} would be great.",
            "It would help to sort the {doc} list by date.",
        ],
        "high": [
            "We need single sign-on added before our security audit on Friday, or we cannot renew.",
            "Our contract renewal this month depends on you adding bulk user import.",
            "Our legal team requires an audit log feature by next week, or we must stop using the product.",
            "We must have an integration with {tool} before our launch on Monday, or we will switch vendors.",
        ],
    },
}

GREETINGS = ["", "Hi!", "Hello.", "Hi there!", "Hello team!", "Hey support!"]
CLOSERS = {
    "low": [
        "No rush, thanks!",
        "Whenever you have time is fine.",
        "Not urgent at all.",
        "Thanks!",
        "Just wondering, no hurry.",
    ],
    "high": [
        "This is urgent, please help as soon as possible!",
        "Please treat this as urgent.",
        "I need an answer today.",
        "Please respond right away.",
    ],
}


def make_tickets(rng: random.Random) -> list[dict[str, str]]:
    """Customer support messages labelled with ``intent`` and ``urgency``."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for intent, by_urgency in TICKET_PROBLEMS.items():
        for urgency, problems in by_urgency.items():
            count = 0
            for _ in range(10_000):
                greeting = rng.choice(GREETINGS)
                text = " ".join(
                    p for p in (greeting, _fill(rng.choice(problems), rng), rng.choice(CLOSERS[urgency])) if p
                )
                if text in seen or len(text.split()) > MAX_SHORT_WORDS:
                    continue
                seen.add(text)
                rows.append({"ticket": text, "intent": intent, "urgency": urgency})
                count += 1
                if count == TICKETS_PER_CELL:
                    break
            else:
                raise RuntimeError(f"could not make {TICKETS_PER_CELL} unique tickets for {intent}/{urgency}")
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------- reviews

REVIEW_PRODUCTS = [
    "blender",
    "desk lamp",
    "coffee maker",
    "keyboard",
    "vacuum cleaner",
    "electric kettle",
    "toaster",
    "hair dryer",
    "smart speaker",
    "webcam",
    "microwave",
    "fitness tracker",
]

REVIEW_OPENERS = {
    "positive": [
        "I love this {product_r}.",
        "This {product_r} is fantastic.",
        "Best {product_r} I have owned.",
        "Really happy with this {product_r}.",
        "This {product_r} exceeded my expectations.",
    ],
    "negative": [
        "This {product_r} is a huge disappointment.",
        "I regret buying this {product_r}.",
        "Worst {product_r} I have ever bought.",
        "Very unhappy with this {product_r}.",
        "This {product_r} is terrible.",
    ],
    "neutral": [
        "This {product_r} is okay.",
        "It's an average {product_r}.",
        "The {product_r} is neither great nor bad.",
        "This {product_r} is fine, nothing special.",
        "An ordinary {product_r}.",
    ],
}
REVIEW_DETAILS = {
    "positive": [
        "The build quality is excellent.",
        "It was easy to set up in minutes.",
        "Great value for the money.",
        "It still works perfectly after {weeks} weeks.",
        "Delivery was fast and the packaging was neat.",
        "It looks even better than in the photos.",
    ],
    "negative": [
        "It broke after {weeks} days.",
        "The instructions were useless and setup took hours.",
        "Way overpriced for what you get.",
        "It arrived scratched and support never replied.",
        "It stopped working after the first week.",
        "It feels cheap and flimsy.",
    ],
    "neutral": [
        "It works as described, nothing more.",
        "The quality is about what you'd expect for the price.",
        "Setup took about {minutes} minutes.",
        "It looks the same as in the photos.",
        "I have used it for {weeks} weeks so far.",
        "It comes in three colours.",
    ],
}
REVIEW_CLOSERS = {
    "positive": ["Highly recommend!", "Would buy again.", "Five stars.", ""],
    "negative": ["Would not recommend.", "I am returning it.", "One star.", ""],
    "neutral": ["It does the job.", "Not great, not terrible.", "Three stars.", ""],
}


def make_reviews(rng: random.Random) -> list[dict[str, str]]:
    """Product reviews labelled ``positive``, ``negative`` or ``neutral``."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for label in ("positive", "negative", "neutral"):
        count = 0
        for _ in range(10_000):
            details = rng.sample(REVIEW_DETAILS[label], rng.choice([1, 1, 2]))
            parts = [rng.choice(REVIEW_OPENERS[label]), *details, rng.choice(REVIEW_CLOSERS[label])]
            text = " ".join(_fill(p, rng) for p in parts if p)
            if text in seen or len(text.split()) > MAX_SHORT_WORDS:
                continue
            seen.add(text)
            rows.append({"text": text, "label": label})
            count += 1
            if count == REVIEWS_PER_LABEL:
                break
        else:
            raise RuntimeError(f"could not make {REVIEWS_PER_LABEL} unique reviews for {label}")
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------- pump readings

READINGS_PER_STATUS = 56  # 3 statuses x 56 = 168
VIBRATION_LIMITS = (3.0, 6.0)
"""The rule (mm/s RMS): below 3.0 ``normal``, from 3.0 to below 6.0 ``warning``, 6.0 and above ``fault``."""
VIBRATION_BANDS = {"normal": (0.6, 3.0), "warning": (3.0, 6.0), "fault": (6.0, 9.6)}
"""Each status's range of true vibration (its rows are drawn inside it)."""
NEAR_LIMIT_SHARE = 0.15  # share of rows whose true vibration lies within NEAR_LIMIT of a limit of their band
NEAR_LIMIT = 0.3
VIBRATION_JITTER = 0.15  # sd (mm/s) of the sensor noise added to the true vibration before it is recorded
BEARING_TEMP_MEAN = {"normal": 49.0, "warning": 54.0, "fault": 59.0}  # a weak signal: sd 6 C overlaps them
BEARING_TEMP_SD = 6.0
PRESSURE_RANGE = (3.0, 5.5)  # bar, the same for every status (a distractor)
FLOW_RANGE = (90.0, 150.0)  # L/min, the same for every status (a distractor)


def _true_vibration(status: str, rng: random.Random) -> float:
    """A true vibration inside ``status``'s band: mostly clear of the limits, sometimes close to one."""
    lo, hi = VIBRATION_BANDS[status]
    inner = [limit for limit in VIBRATION_LIMITS if lo <= limit <= hi]
    if rng.random() < NEAR_LIMIT_SHARE:
        limit = rng.choice(inner)
        return rng.uniform(limit, limit + NEAR_LIMIT) if limit == lo else rng.uniform(limit - NEAR_LIMIT, limit)
    return rng.uniform(lo + NEAR_LIMIT if lo in inner else lo, hi - NEAR_LIMIT if hi in inner else hi)


def make_pump_readings(rng: random.Random) -> list[dict[str, str]]:
    """Sensor readings of a centrifugal pump (four numbers) labelled with its ``status``.

    The status is the band of the pump's true vibration (``VIBRATION_LIMITS``); the recorded vibration adds
    sensor jitter, so a few readings close to a limit fall on the other side of it. Bearing temperature
    rises a little with the status (a weak signal); pressure and flow do not depend on it.
    """
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, ...]] = set()
    for status in VIBRATION_BANDS:
        count = 0
        for _ in range(10_000):
            vibration = max(0.1, _true_vibration(status, rng) + rng.gauss(0.0, VIBRATION_JITTER))
            row = {
                "bearing_temp": f"{rng.gauss(BEARING_TEMP_MEAN[status], BEARING_TEMP_SD):.1f}",
                "vibration": f"{vibration:.1f}",
                "pressure": f"{rng.uniform(*PRESSURE_RANGE):.1f}",
                "flow_rate": f"{rng.uniform(*FLOW_RANGE):.1f}",
                "status": status,
            }
            key = tuple(row.values())
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
            count += 1
            if count == READINGS_PER_STATUS:
                break
        else:
            raise RuntimeError(f"could not make {READINGS_PER_STATUS} unique readings for {status}")
    rng.shuffle(rows)
    return rows


# --------------------------------------------------------------------------- output


def render_documents(rows: list[dict[str, str]]) -> str:
    """CSV text with columns document, category, risk_level."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["document", "category", "risk_level"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def render_tickets(rows: list[dict[str, str]]) -> str:
    """JSONL text, one ticket object per line."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def render_reviews(rows: list[dict[str, str]]) -> str:
    """A JSON list of review objects."""
    return json.dumps(rows, ensure_ascii=False, indent=1) + "\n"


def render_pump_readings(rows: list[dict[str, str]]) -> str:
    """CSV text with columns bearing_temp, vibration, pressure, flow_rate, status."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


OUTPUTS: dict[
    str, tuple[Callable[[random.Random], list[dict[str, str]]], Callable[[list[dict[str, str]]], str]]
] = {
    "documents.csv": (make_documents, render_documents),
    "support_tickets.jsonl": (make_tickets, render_tickets),
    "sentiment.json": (make_reviews, render_reviews),
    "pump_readings.csv": (make_pump_readings, render_pump_readings),  # last: the others keep their seeds
}


def generate(seed: int = SEED) -> dict[str, str]:
    """File name -> file text for every sample dataset (each from its own seeded generator)."""
    out: dict[str, str] = {}
    for i, (name, (make, render)) in enumerate(OUTPUTS.items()):
        out[name] = render(make(random.Random(seed * 1000 + i)))
    return out


def write_all(out_dir: Path, seed: int = SEED) -> list[Path]:
    """Write every sample dataset into ``out_dir``; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in generate(seed).items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8", newline="")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    for path in write_all(args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()
