"""Defaults, as named constants. Everything the library does without being told lives here."""

from __future__ import annotations

from importlib.metadata import version

import httpx

VERSION = version("vsr-async")
USER_AGENT = f"vsr-async/{VERSION}"

DEFAULT_BASE_URL = "https://zcbservice.aizfw.cn/kyyReactApiServer"
API_KEY_ENV = "VSR_API_KEY"
BASE_URL_ENV = "VSR_BASE_URL"

#: Per request: 10 s to connect, 30 s for each read, write and pool wait.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
#: Retries of one request after its first attempt (queries; creates only on connect errors).
DEFAULT_MAX_RETRIES = 3
#: Requests in flight at once, and the size of the connection pool we create.
DEFAULT_MAX_CONNECTIONS = 10

#: The provider recommends polling every 5-10 s.
DEFAULT_INTERVAL = 5.0
#: Each poll is scheduled ``interval * (1 ± JITTER)`` after the last, so watchers drift apart.
JITTER = 0.1
#: `wait()` gives up after 30 minutes unless told otherwise; ``timeout=None`` waits forever.
DEFAULT_WAIT_TIMEOUT = 30 * 60.0

#: Capped exponential backoff between retries: 0.5 s, 1 s, 2 s, ... up to 8 s, with full jitter.
BACKOFF_FACTOR = 0.5
BACKOFF_MAX = 8.0
#: A ``Retry-After`` longer than this is not slept through by a request: it raises `RateLimitError`.
MAX_RETRY_AFTER = 60.0
#: A watch gives a task up at this many unreadable answers in a row (a proxy's HTML error
#: page now and then is not the task's fault; an endless stream of them is).
MAX_MALFORMED = 3
#: A task's first this many failed polls in a row are retried after the backoff (or the
#: ``Retry-After``) alone, sooner than its interval if that is longer: a blip costs the task a
#: moment, not an interval. From the next, no sooner than its interval either: the server is
#: struggling, and a watch of many tasks must not multiply its load.
QUICK_RETRIES = 3
#: ... and only while quick retries are at most this share of the polls sent: a retry budget,
#: as Finagle's and Envoy's (20% there too). While a few polls fail, each is retried quickly;
#: in an outage, when every poll fails, quick retries add at most a quarter to the load (each
#: poll earns a fifth of one), where three each made the outage's first interval 4x. Under
#: the chaos mix (28% of polls failing) most failures are still retried quickly. A 429's
#: retries are not counted: the rate budget paces those.
QUICK_RETRY_SHARE = 0.2
#: ... plus this many saved up while polls go through (and no more): the first failures of a
#: blip are retried quickly however few polls came before them (one task failing
#: `QUICK_RETRIES` times in a row, a dozen at once).
QUICK_RETRY_BURST = 10.0
#: A failing task's backoff stops growing at this many of its intervals (a server's
#: ``Retry-After`` excepted): one task in a hundred fails four times in a row when a quarter
#: of polls fail, and an 8 s backoff would leave it unseen for 8 intervals of 1 s; within two,
#: an outage still halves the polls. Intervals of `BACKOFF_MAX` / 2 or more never meet it.
MAX_FAILING_INTERVALS = 2.0
#: A task's retry after a ``Retry-After`` shorter than `PAUSE_RETRY_AFTER` waits up to this
#: share of it longer (never less than the server asked): tasks refused together come back
#: spread over a fifth of the wait, not in one herd that the server refuses again.
RETRY_AFTER_JITTER = 0.2
#: A watch logs a warning when a task's polls fail this often in a row: a wrong base URL or a
#: dead server should not look like slow tasks.
WARN_AFTER_FAILURES = 3
#: ... and at most once in this many seconds, so a long watch through a bad spell stays readable.
WARN_EVERY = 60.0

#: How much of an unreadable body an error message quotes.
SNIPPET_LENGTH = 200
#: The largest API answer (decoded) we read: a larger one is refused without being read whole.
MAX_RESPONSE_BYTES = 1024 * 1024

#: A download writes to disk in batches of this many bytes (from a worker thread).
DOWNLOAD_BUFFER = 1024 * 1024
#: Redirects a download follows (each one checked: http(s) only, never with the key).
MAX_REDIRECTS = 5
#: The longest file name a download makes up from a task ID or a URL.
MAX_NAME_LENGTH = 200

#: `Stretching`'s defaults: from `DEFAULT_INTERVAL` to 10 s (the provider's 5-10 s advice) over
#: the first 5 minutes a task spends in one status.
STRETCH_STOP = 10.0
STRETCH_OVER = 300.0
#: `WatchStats.rate` counts the polls sent over about this many seconds.
RATE_WINDOW = 5.0

#: A rate budget's bucket holds this many seconds of its rate (at least one request): in any
#: ``T`` seconds at most ``rate * T + max(1, rate * RATE_BURST)`` requests leave.
RATE_BURST = 0.05
#: The fleet's shared budget (`vsr_async.fleet`): on 429s its rate is multiplied by this (once
#: per round of requests) ...
RATE_DECREASE = 0.5
#: ... but never below this share of ``rate_limit`` ...
RATE_FLOOR = 0.05
#: ... and climbs back by this share of ``rate_limit`` per second of successful requests.
RATE_RECOVERY = 0.1

#: A client learns the server's quota from its 429s, a window of answers at a time: one closes
#: after this many seconds ...
QUOTA_WINDOW = 1.0
#: ... and at least this many answers (to requests sent after it opened), or as few as
#: `QUOTA_REFUSALS` 429s if they are `QUOTA_REFUSED` of its answers or more.
QUOTA_ANSWERS = 50
QUOTA_REFUSALS = 5
#: A window with at least this share of 429s means the client asks more than the quota: a few
#: 429s among many answers (a busy server's) cut nothing.
QUOTA_REFUSED = 0.1
#: Then the rate allowed becomes this share of the rate the server accepted in that window ...
QUOTA_DECREASE = 0.85
#: ... never below this many requests per second ...
QUOTA_FLOOR = 1.0
#: ... and climbs back by this share of the highest rate the server accepted, per second of
#: successful requests.
QUOTA_RECOVERY = 0.05
#: A ``Retry-After`` this long or longer (a quota window, not a moment's overload) stops every
#: request of the client until it has passed; a shorter one delays only the request that met it.
PAUSE_RETRY_AFTER = 5.0

#: The transport under the ``httpx.AsyncClient`` we create: httpx's own (asyncio and trio), or
#: ``"aiohttp"`` (asyncio only, from the ``aiohttp`` extra).
DEFAULT_TRANSPORT = "httpx"
