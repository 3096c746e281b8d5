"""A seeded synthetic shop: catalog, users and sessions in the prepared layout.

The generator is small on purpose, but every part of the engine finds what
it needs in its output:

- a catalog whose item titles are built from the words of each category
  (brand, adjective, colour, product noun) with a price and a popularity that
  falls off with rank inside the category;
- users with lasting tastes (a sparse preference over categories) who come
  back for several sessions, and anonymous visitors (null `user_id`);
- sessions whose intent (the current category) drifts from event to event;
- searches whose query words come from item titles, each followed by clicks
  on items whose titles contain every query word;
- `cart_add`, `cart_remove` and `purchase` events that follow the clicks;
- timestamps spread over `days` days from `start` with more traffic in the
  evening, and seconds to minutes between the events of a session.

The same `ShopConfig` (seed included) gives equal tables.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recsys.datasets.io import EventColumns, ItemColumns, write_prepared
from recsys.errors import ValidationError

log = logging.getLogger(__name__)

# Per category: brands, adjectives and product nouns that titles are built
# from. Colours are shared by every category.
CATEGORY_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "laptops": (
        ("lumio", "vextra", "orbis"),
        ("slim", "gaming", "business", "convertible", "ultralight", "rugged"),
        ("laptop", "notebook", "chromebook", "ultrabook"),
    ),
    "phones": (
        ("tellar", "pixo", "nordfon"),
        ("dual-sim", "rugged", "compact", "flagship", "budget", "foldable"),
        ("smartphone", "phone", "handset"),
    ),
    "audio": (
        ("sonaro", "basslab", "quietly"),
        ("wireless", "noise-cancelling", "studio", "waterproof", "portable"),
        ("headphones", "earbuds", "speaker", "soundbar", "turntable"),
    ),
    "tv": (
        ("viewmax", "lumio", "brightline"),
        ("4k", "oled", "curved", "smart", "outdoor"),
        ("television", "projector", "monitor"),
    ),
    "kitchen": (
        ("kochwerk", "brewsmith", "panela"),
        ("cast-iron", "nonstick", "electric", "stainless", "programmable"),
        ("kettle", "skillet", "blender", "toaster", "espresso-machine", "wok"),
    ),
    "shoes": (
        ("strider", "trailfox", "urbanfeet"),
        ("running", "hiking", "leather", "waterproof", "lightweight", "vegan"),
        ("sneakers", "boots", "sandals", "loafers"),
    ),
    "jackets": (
        ("northpeak", "trailfox", "stormline"),
        ("waterproof", "insulated", "packable", "fleece-lined", "windproof"),
        ("jacket", "parka", "raincoat", "vest", "anorak"),
    ),
    "books": (
        ("inkwell", "papercraft", "folio"),
        ("illustrated", "paperback", "hardcover", "annotated", "pocket"),
        ("novel", "cookbook", "atlas", "biography", "thriller"),
    ),
    "toys": (
        ("brickly", "playform", "tinkertot"),
        ("wooden", "educational", "remote-control", "magnetic", "plush"),
        ("puzzle", "robot", "train-set", "doll", "building-blocks"),
    ),
    "garden": (
        ("greenhand", "yardwise", "bloomco"),
        ("cordless", "foldable", "self-watering", "heavy-duty", "solar"),
        ("lawnmower", "hose", "planter", "trimmer", "lantern"),
    ),
    "beauty": (
        ("velora", "purelab", "glowy"),
        ("organic", "fragrance-free", "hydrating", "matte", "travel-size"),
        ("serum", "moisturizer", "lipstick", "shampoo", "sunscreen"),
    ),
    "sports": (
        ("fitcore", "peakform", "trailfox"),
        ("adjustable", "foldable", "lightweight", "pro", "compact"),
        ("dumbbells", "yoga-mat", "bicycle", "treadmill", "tennis-racket"),
    ),
}
COLOURS = ("black", "white", "red", "blue", "green", "grey", "silver", "orange")

DAY_MS = 24 * 3600 * 1000
# Upper bounds that keep a run within memory (the default sizes are far below).
SIZE_LIMITS = {
    "n_users": 1_000_000,
    "n_items": 1_000_000,
    "n_sessions": 10_000_000,
    "days": 3660,
}
FIRST_START = date(2002, 1, 1)
LAST_START = date(2099, 12, 31)
# Relative traffic per hour of the day (UTC): quiet nights, busy evenings.
HOURLY_TRAFFIC = np.array(
    [1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6, 6, 5, 5, 5, 6, 7, 8, 9, 9, 8, 5, 2],
    dtype=np.float64,
)


@dataclass(frozen=True)
class ShopConfig:
    """Size and behaviour of the synthetic shop.

    Probabilities apply at each step of a session (a click, or a search with
    its clicks) unless the comment says otherwise.
    """

    n_users: int = 2000
    n_items: int = 5000
    n_sessions: int = 20000
    seed: int = 0
    start: str = "2024-03-01"
    days: int = 28
    # Share of sessions that belong to a registered (returning) user.
    known_user_share: float = 0.6
    mean_session_events: float = 7.0
    search_probability: float = 0.12
    # Chance that a later click of the session picks an item matching the
    # latest search (until the intent drifts).
    search_focus_probability: float = 0.7
    drift_probability: float = 0.15
    repeat_probability: float = 0.1
    cart_add_probability: float = 0.08
    cart_remove_probability: float = 0.1
    # Chance that a session ending with a non-empty cart checks out.
    checkout_probability: float = 0.5

    def validate(self) -> None:
        for name, high in SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(name, value, "a positive integer")
            if value > high:
                raise ValidationError(name, value, f"at most {high:,}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValidationError("seed", self.seed, "an integer")
        if self.seed < 0:
            raise ValidationError("seed", self.seed, "an integer of 0 or more")
        if self.n_items < len(CATEGORY_WORDS):
            raise ValidationError(
                "n_items",
                self.n_items,
                f"at least {len(CATEGORY_WORDS)} (one per category)",
            )
        try:
            start = datetime.fromisoformat(self.start)
        except ValueError:
            raise ValidationError("start", self.start, "a date as YYYY-MM-DD") from None
        # Events must pass validate_event, which rejects timestamps before 2001.
        if not FIRST_START <= start.date() <= LAST_START:
            raise ValidationError(
                "start", self.start, f"a date from {FIRST_START} to {LAST_START}"
            )
        for name, value in asdict(self).items():
            if name.endswith(("_probability", "_share")) and not 0.0 <= value <= 1.0:
                raise ValidationError(name, value, "a probability between 0 and 1")
        if self.mean_session_events < 1:
            raise ValidationError(
                "mean_session_events", self.mean_session_events, "at least 1"
            )


@dataclass(frozen=True)
class Catalog:
    """Items of the shop as parallel arrays, grouped for fast lookups."""

    item_ids: list[str]
    categories: list[str]
    titles: list[str]
    brands: list[str]
    prices: list[float]
    # Per category: item indexes, and their popularity as probabilities.
    category_items: dict[str, np.ndarray]
    category_weights: dict[str, np.ndarray]
    # Per category: title word -> set of item indexes whose title has it.
    word_items: dict[str, dict[str, set[int]]]
    # Per item: its popularity inside its category (a probability).
    item_weights: np.ndarray

    def to_table(self) -> pa.Table:
        items = ItemColumns()
        for i, item_id in enumerate(self.item_ids):
            items.append(
                item_id,
                category=self.categories[i],
                title=self.titles[i],
                brand=self.brands[i],
                price=self.prices[i],
            )
        return items.to_table()


def make_catalog(config: ShopConfig, rng: np.random.Generator) -> Catalog:
    """Draw items: category, title words, brand, price and popularity."""
    names = list(CATEGORY_WORDS)
    width = len(str(config.n_items - 1))
    # Every category gets at least one item; the rest are spread at random.
    assigned = np.concatenate(
        [
            np.arange(len(names)),
            rng.integers(0, len(names), size=config.n_items - len(names)),
        ]
    )
    item_ids, categories, titles, brands, prices = [], [], [], [], []
    for i, c in enumerate(assigned):
        category = names[int(c)]
        brand_words, adjectives, nouns = CATEGORY_WORDS[category]
        brand = str(rng.choice(brand_words))
        words = [
            brand,
            str(rng.choice(adjectives)),
            str(rng.choice(COLOURS)),
            str(rng.choice(nouns)),
        ]
        item_ids.append(f"i{i:0{width}d}")
        categories.append(category)
        titles.append(" ".join(words))
        brands.append(brand)
        base_price = 10.0 * (1 + int(c) % 5) ** 2
        prices.append(round(float(base_price * rng.lognormal(0.0, 0.5)), 2))

    category_items: dict[str, np.ndarray] = {}
    category_weights: dict[str, np.ndarray] = {}
    word_items: dict[str, dict[str, set[int]]] = {}
    item_weights = np.zeros(config.n_items)
    for c, category in enumerate(names):
        members = np.flatnonzero(assigned == c)
        rng.shuffle(members)
        # Zipf-like popularity by a random rank inside the category.
        weights = 1.0 / np.arange(1, len(members) + 1) ** 0.9
        category_items[category] = members
        category_weights[category] = weights / weights.sum()
        item_weights[members] = category_weights[category]
        index: dict[str, set[int]] = {}
        for member in members.tolist():
            for word in titles[member].split():
                index.setdefault(word, set()).add(member)
        word_items[category] = index
    return Catalog(
        item_ids=item_ids,
        categories=categories,
        titles=titles,
        brands=brands,
        prices=prices,
        category_items=category_items,
        category_weights=category_weights,
        word_items=word_items,
        item_weights=item_weights,
    )


class _SessionWriter:
    """Generator of one session's events, appended to shared columns."""

    def __init__(
        self,
        config: ShopConfig,
        catalog: Catalog,
        rng: np.random.Generator,
        events: EventColumns,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.rng = rng
        self.events = events
        self.category_names = list(CATEGORY_WORDS)

    def write(
        self, session_id: str, user_id: str | None, taste: np.ndarray, start_ms: int
    ) -> None:
        rng, config = self.rng, self.config
        self.session_id, self.user_id, self.ts = session_id, user_id, start_ms
        self.cart: list[int] = []
        self.last_item: int | None = None
        # Items that match the latest search. Clicks favour them until the
        # intent drifts.
        self.search_matches: list[int] = []
        category = self._draw_category(taste)
        n_steps = int(rng.geometric(1.0 / config.mean_session_events))
        for step in range(n_steps):
            if step and rng.random() < config.drift_probability:
                category = self._draw_category(taste)
                self.search_matches = []
            if rng.random() < config.search_probability:
                self._search(category)
            else:
                self._click(category)
            self._maybe_change_cart()
        if self.cart and rng.random() < config.checkout_probability:
            self._advance(long=True)
            for item in self.cart:
                self._append("purchase", item)

    def _draw_category(self, taste: np.ndarray) -> str:
        return self.category_names[int(self.rng.choice(len(taste), p=taste))]

    def _advance(self, *, long: bool = False) -> None:
        # Seconds between events: lognormal, median about 20 s (60 s at checkout).
        median_s = 60.0 if long else 20.0
        seconds = median_s * self.rng.lognormal(0.0, 0.8)
        self.ts += max(1000, int(seconds * 1000))

    def _append(
        self, event_type: str, item: int | None = None, query: str | None = None
    ) -> None:
        self.events.append(
            self.session_id,
            event_type,
            self.ts,
            item_id=None if item is None else self.catalog.item_ids[item],
            user_id=self.user_id,
            query=query,
        )

    def _popular_item(self, category: str) -> int:
        members = self.catalog.category_items[category]
        weights = self.catalog.category_weights[category]
        return int(members[self.rng.choice(len(members), p=weights)])

    def _click(self, category: str) -> None:
        rng = self.rng
        if self.last_item is not None and rng.random() < self.config.repeat_probability:
            item = self.last_item
        elif (
            self.search_matches and rng.random() < self.config.search_focus_probability
        ):
            item = self.search_matches[int(rng.integers(len(self.search_matches)))]
        else:
            item = self._popular_item(category)
        self._advance()
        self._append("click", item)
        self.last_item = item

    def _search(self, category: str) -> None:
        """Search for words of a target item's title, then click matches."""
        rng, catalog = self.rng, self.catalog
        target = self._popular_item(category)
        brand, adjective, colour, noun = catalog.titles[target].split()
        # Mostly the product noun, sometimes narrowed by one more word.
        words = [noun]
        if rng.random() < 0.5:
            words.insert(0, str(rng.choice([brand, adjective, colour])))
        index = catalog.word_items[category]
        matches = sorted(set.intersection(*(index[w] for w in words)))
        self._advance()
        self._append("search", query=" ".join(words))
        n_clicks = min(len(matches), 1 + int(rng.integers(0, 3)))
        weights = catalog.item_weights[matches]
        chosen = rng.choice(
            len(matches), size=n_clicks, replace=False, p=weights / weights.sum()
        )
        self.search_matches = matches
        for position in chosen:
            item = matches[int(position)]
            self._advance()
            self._append("click", item)
            self.last_item = item

    def _maybe_change_cart(self) -> None:
        rng, config = self.rng, self.config
        if self.cart and rng.random() < config.cart_remove_probability:
            removed = self.cart.pop(int(rng.integers(len(self.cart))))
            self._advance()
            self._append("cart_remove", removed)
            if removed == self.last_item:
                return
        item = self.last_item
        if (
            item is not None
            and item not in self.cart
            and rng.random() < config.cart_add_probability
        ):
            self.cart.append(item)
            self._advance()
            self._append("cart_add", item)


def make_events(
    config: ShopConfig, catalog: Catalog, rng: np.random.Generator
) -> pa.Table:
    """Draw users and sessions and return the events table."""
    n_categories = len(CATEGORY_WORDS)
    # Lasting tastes: sparse preferences over categories.
    tastes = rng.dirichlet(np.full(n_categories, 0.3), size=config.n_users)
    # Some users come back far more often than others.
    activity = rng.pareto(1.5, size=config.n_users) + 1.0
    activity /= activity.sum()
    user_width = len(str(config.n_users - 1))
    session_width = len(str(config.n_sessions - 1))

    start_ms = int(
        datetime.fromisoformat(config.start).replace(tzinfo=UTC).timestamp() * 1000
    )
    days = rng.integers(0, config.days, size=config.n_sessions)
    hours = rng.choice(
        24, size=config.n_sessions, p=HOURLY_TRAFFIC / HOURLY_TRAFFIC.sum()
    )
    offsets = rng.integers(0, 3600 * 1000, size=config.n_sessions)
    starts = start_ms + days * DAY_MS + hours * 3600 * 1000 + offsets
    # Session ids follow start time, so id order is time order.
    starts.sort()

    events = EventColumns()
    writer = _SessionWriter(config, catalog, rng, events)
    for s in range(config.n_sessions):
        if rng.random() < config.known_user_share:
            user = int(rng.choice(config.n_users, p=activity))
            user_id: str | None = f"u{user:0{user_width}d}"
            taste = tastes[user]
        else:
            user_id = None
            taste = rng.dirichlet(np.full(n_categories, 0.3))
        writer.write(f"s{s:0{session_width}d}", user_id, taste, int(starts[s]))
    return events.to_table()


def generate_shop(config: ShopConfig) -> tuple[pa.Table, pa.Table]:
    """Return `(events, items)` tables of the shop described by `config`."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    catalog = make_catalog(config, rng)
    events = make_events(config, catalog, rng)
    return events, catalog.to_table()


def write_shop(config: ShopConfig, out: Path | str) -> dict[str, Any]:
    """Generate the shop and write it as a prepared dataset at `out`."""
    events, items = generate_shop(config)
    return write_prepared(
        out,
        dataset="synthetic",
        sources=[],
        events=events,
        items=items,
        synthetic_ts=True,
        notes=[f"generated by recsys.datasets.synthetic with {asdict(config)}"],
    )
