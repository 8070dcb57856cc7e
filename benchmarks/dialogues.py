# ruff: noqa: E501 - tables of sentences read better one per line
"""A seeded generator of realistic multi-session conversations between recurring friends, for the
session-memory recall benchmark (benchmarks/recall.py --corpus dialogues, benchmarks/fusion.py).

Shaped on public multi-session chat data (LoCoMo-like) rather than on an assistant's help desk:
a few pairs of friends each talk over many sessions, weeks apart. Speaker A's lines are role
`user`, B's `assistant`. A session is named as such data names it, "Gina and Jon, 8 May 2023":
both speakers and the date live in the name. Every session opens with greetings that name the
other speaker, and most of it is chit-chat (weather, weekends, food, shows, family, work in
general, encouragement), shared in kind by every pair and full of the words that life events use
too ("work", "dog", "trip"); its lines vary in how they open and close, as people rarely say a
line twice word for word. Into some sessions a speaker drops a life event told with specific
words (a company, a pet's name, a place), the friend reacts repeating some of them and asks, and
the teller adds a detail. Two facts change over time: where a speaker lives (three tellings) and
where they work (two).

Questions come in styles (`Question.style`):
- `quote` reuses the conversation's own words ("What did Gina open after losing her job at
  Brightway Couriers?");
- `paraphrase` avoids them ("What business did Gina start after being laid off?");
- `when` asks for a date ("When did Gina adopt Pickles?"): the evidence is the session where it
  was told, whose name holds the date;
- `multi` spans sessions ("Which cities has Jon lived in?"): every session that tells a part is
  evidence, and a hit is any of them;
- questions about the latest or an earlier value of a changing fact are `quote` or `paraphrase`
  by their wording.

Every bank of sentences (speakers, event values, phrasings, chit-chat) comes in two halves:
`half=0` to tune on, `half=1` held out. Held-out data is half 1 with seeds not used for tuning.
The same (seed, half) gives the same corpus.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from benchmarks.conversations import Corpus, Question, Session

STYLES = ("quote", "paraphrase", "when", "multi")

# (first name, possessive pronoun), four pairs per half.
SPEAKERS = (
    [("Gina", "her"), ("Jon", "his"), ("Maria", "her"), ("Tomas", "his"),
     ("Caroline", "her"), ("Melanie", "her"), ("Dev", "his"), ("Audrey", "her")],
    [("Nate", "his"), ("Joanna", "her"), ("Priya", "her"), ("Sam", "his"),
     ("Evan", "his"), ("Lena", "her"), ("Rosa", "her"), ("Calvin", "his")],
)  # fmt: skip

GREETINGS = (
    [("Hey {y}! Long time no see. How have you been?", "Hi {x}! Good to hear from you, I've been alright, a bit busy."),
     ("Hi {y}, it's been a while! What's new with you?", "Hey {x}! Not much, just the usual. How about you?"),
     ("Morning {y}! Got a minute to catch up?", "Always for you, {x}! What's going on?")],
    [("Hello {y}! So glad we could chat again.", "Hi {x}! Me too, it's been too long."),
     ("Yo {y}, how's everything on your end?", "Hey {x}! Pretty good, can't complain. You?"),
     ("Hey hey {y}! I was just thinking about you.", "Aw, {x}! I was about to text you too.")],
)  # fmt: skip
GOODBYES = (
    [("I should run, talk soon {y}!", "Bye {x}, take care!"),
     ("Anyway, great catching up, {y}.", "Same here {x}, let's not wait so long next time.")],
    [("Okay I have to go, bye {y}!", "See you {x}, stay in touch!"),
     ("Lovely chatting, {y}. Take care of yourself.", "You too {x}, speak soon!")],
)  # fmt: skip

# Chit-chat: (opening line, reply), either speaker may open. Shares words with the events on purpose.
CHITCHAT = (
    [("The weather has been so {weather} here lately.", "Ugh, same here. I can't wait for some sunshine."),
     ("What did you get up to this weekend?", "Nothing special, just {activity}."),
     ("Work has been crazy this week, I'm exhausted.", "Hang in there, {x}! The weekend is almost here."),
     ("I tried a new {dish} recipe last night, it turned out great.", "Yum, you have to send me the recipe!"),
     ("Have you been watching any good shows lately?", "I just finished {show}, it kept me up way too late."),
     ("My family came over for dinner on Sunday, it was chaotic but fun.", "That sounds lovely, family dinners are the best."),
     ("I've been trying to go on more walks in the morning.", "That's a great habit, {x}. It really clears the head."),
     ("I'm so proud of you for everything you've been doing, {y}.", "Thank you {x}, that means a lot to me."),
     ("Did you see the game last night?", "I missed it! Was it any good?"),
     ("My neighbour's dog barked all night again.", "Oh no, that's the worst when you need sleep."),
     ("I'm thinking about redecorating the living room.", "Ooh, what colours are you going for?"),
     ("Coffee or tea this morning?", "Coffee, always coffee, {x}."),
     ("I finally cleaned out my closet, so much stuff to donate.", "That must feel so good, I need to do the same."),
     ("The traffic on the way to work was unbelievable today.", "It's been awful lately, I started leaving earlier."),
     ("I've been reading before bed instead of scrolling my phone.", "Smart, I sleep so much better when I do that."),
     ("Any plans for the holidays yet?", "Not yet, probably just staying home and relaxing.")],
    [("It's finally warm enough to sit outside in the evenings.", "I love that time of year, everything feels lighter."),
     ("How was your week, {y}?", "Long, honestly. I spent the evenings {activity}."),
     ("My boss asked me to stay late again yesterday.", "That's rough, {x}. Don't let them take advantage of you."),
     ("I ordered {dish} three nights in a row, no regrets.", "Ha, sometimes you just need a break from cooking."),
     ("Just started watching {show}, it's hilarious.", "Nice, I could use something light to watch."),
     ("My cousins are visiting next month, the house will be full.", "That'll be fun, even if it's a bit hectic."),
     ("I've been getting into podcasts on my commute.", "Any recommendations? I need something new to listen to."),
     ("You always know how to cheer me up, {y}.", "That's what friends are for, {x}!"),
     ("It's been so {weather} this week, can you believe it?", "No way! It's so early in the season."),
     ("My cat knocked a plant off the shelf again.", "Classic cat behaviour, they love chaos."),
     ("I'm trying to drink more water this month.", "Good idea, I always forget to drink enough."),
     ("Breakfast today was pancakes with blueberries.", "Now I'm hungry, thanks a lot {x}!"),
     ("I spent the whole Saturday gardening.", "Your garden must look amazing by now."),
     ("The train was late again, I missed my first meeting.", "Public transport has been so unreliable lately."),
     ("I watched the sunset from the park yesterday.", "That sounds so peaceful, I should do that more."),
     ("Are you doing anything fun this weekend?", "Maybe a movie night, nothing big planned.")],
)  # fmt: skip
# What fills the chit-chat's {dish}, {show}, {activity} and {weather}, per half.
FILLERS = (
    {"dish": ["pasta", "curry", "taco", "banana bread", "ramen", "lasagna", "stir fry", "chili"],
     "show": ["a detective series", "a baking competition", "a sci-fi drama", "an old sitcom", "a nature documentary"],
     "activity": ["cleaned the house and watched a movie", "went to the farmers market", "fixed my bike", "caught up on sleep", "visited my parents"],
     "weather": ["gloomy", "rainy", "hot", "windy", "foggy"]},
    {"dish": ["pizza", "sushi", "dumplings", "soup", "pancakes", "risotto", "burritos", "pad thai"],
     "show": ["a cooking show", "a courtroom drama", "a reality show", "an anime series", "a history podcast"],
     "activity": ["played board games", "painted the fence", "went for a long bike ride", "reorganized the garage", "helped a neighbour move"],
     "weather": ["sunny", "stormy", "humid", "chilly", "snowy"]},
)  # fmt: skip
# How a chit-chat line may open and close, per half: people rarely say the same line twice word
# for word, and a line said verbatim in many sessions is one the engine sets aside as a greeting.
OPENINGS = (["", "", "Haha, ", "Honestly, ", "Oh, ", "So, ", "Ugh, ", "Well, "],
            ["", "", "Lol, ", "Okay so ", "Hmm, ", "Ah, ", "Man, ", "Yeah, "])  # fmt: skip
CLOSINGS = (["", "", " :)", " haha", " to be honest.", " you know?"],
            ["", "", " lol", " :D", " for real.", " right?"])  # fmt: skip


@dataclass(frozen=True)
class Event:
    """A life event kind: values to draw from and, per half, how it is told and asked about.
    Templates take the value's slots as {0}, {1} …, the teller {x}, the friend {y} and the
    teller's possessive pronoun {their}."""

    values: tuple[list[tuple[str, ...]], list[tuple[str, ...]]]
    told: tuple[str, str]  # (half 0, half 1): the teller's line
    reaction: tuple[str, str]  # the friend's reply, repeating some words
    detail: tuple[str, str]  # the teller's follow-up
    quote: tuple[str, str]  # question reusing the told words
    paraphrase: tuple[str, str]  # question avoiding them
    when: tuple[str, str]


EVENTS: dict[str, Event] = {
    "lost_job": Event(
        (
            [
                ("Brightway Couriers", "dance studio"),
                ("Parcelgo", "bakery"),
                ("Hollis Insurance", "flower shop"),
                ("Nimbus Telecom", "bike repair shop"),
            ],
            [
                ("Quickcart", "coffee truck"),
                ("Ardent Motors", "bookshop"),
                ("Lumen Bank", "yoga studio"),
                ("Fairway Logistics", "tattoo parlour"),
            ],
        ),
        (
            "I lost my job at {0} last week. They cut the whole team overnight.",
            "Bad news, {y}: {0} laid me off on Monday, along with half my department.",
        ),
        (
            "Oh no, {x}, I'm so sorry about {0}! What are you going to do now?",
            "That's awful, {x}. {0} didn't deserve you anyway. Any ideas for what's next?",
        ),
        (
            "Honestly I'm going to open my own {1}. I've dreamed about it for years.",
            "I think I'll finally start my own {1}, I've saved a bit for it.",
        ),
        (
            "What did {x} open after losing {their} job at {0}?",
            "What did {x} start after {0} laid {their} team off?",
        ),
        (
            "What kind of business is {x} starting after being let go?",
            "Which venture did {x} take up once unemployed?",
        ),
        ("When did {x} lose {their} job at {0}?", "When was {x} laid off by {0}?"),
    ),
    "pet": Event(
        (
            [
                ("beagle", "Pickles", "Sunny Paws shelter"),
                ("tabby cat", "Miso", "Second Chance rescue"),
                ("parrot", "Kiwi", "the Elm Street pet shop"),
                ("corgi", "Waffles", "a breeder upstate"),
            ],
            [
                ("husky", "Juniper", "Happy Tails rescue"),
                ("rabbit", "Clover", "the county shelter"),
                ("ferret", "Bandit", "a friend of my cousin"),
                ("greyhound", "Comet", "Fast Friends rescue"),
            ],
        ),
        (
            "We adopted a {0} from {2}! We named the little one {1}.",
            "Meet the newest family member: a {0} called {1}, from {2}.",
        ),
        (
            "A {0}! {1} is such a cute name, {x}. How is {1} settling in?",
            "Aww, {1} the {0}! Send me pictures, {x}!",
        ),
        (
            "{1} already stole a sock and hid it under the couch.",
            "{1} sleeps on my feet every night already.",
        ),
        ("What is the name of the {0} {x} adopted from {2}?", "What did {x} call the {0} from {2}?"),
        (
            "What did {x} name the new animal in the household?",
            "What is the name of {x}'s latest four-legged companion?",
        ),
        ("When did {x} adopt {1}?", "When did {1} join {x}'s family?"),
    ),
    "trip": Event(
        (
            [
                ("Lisbon", "the Belem Tower"),
                ("Banff", "Lake Louise"),
                ("Kyoto", "the Fushimi Inari shrine"),
                ("Cornwall", "St Michael's Mount"),
            ],
            [
                ("Iceland", "the Skogafoss waterfall"),
                ("Patagonia", "the Fitz Roy peak"),
                ("Crete", "the Samaria Gorge"),
                ("Vermont", "Mount Mansfield"),
            ],
        ),
        (
            "Just got back from {0}! On the last day we hiked up to {1}.",
            "I'm back from {0}! The highlight was {1} at sunrise.",
        ),
        (
            "{0} sounds amazing, {x}! Was {1} as beautiful as the photos?",
            "Jealous! I've always wanted to see {1}. How was {0} overall?",
        ),
        ("Even better, I took about three hundred photos.", "Breathtaking. I already want to go back."),
        ("What did {x} hike up to in {0}?", "What was the highlight of {x}'s time in {0}?"),
        ("Where did {x} travel for vacation recently?", "Which destination did {x} visit on holiday?"),
        ("When did {x} go to {0}?", "When was {x} in {0}?"),
    ),
    "race": Event(
        (
            [
                ("half marathon", "Rotterdam", "the children's hospital"),
                ("10K", "Chicago", "an animal shelter"),
                ("marathon", "Porto", "cancer research"),
                ("charity 5K", "Dublin", "the food bank"),
            ],
            [
                ("trail run", "Boulder", "a mental health charity"),
                ("half marathon", "Seville", "clean water projects"),
                ("marathon", "Oslo", "the local library"),
                ("10K", "Vancouver", "a homeless shelter"),
            ],
        ),
        (
            "I ran the {1} {0} on Sunday to raise money for {2}!",
            "Guess who finished the {0} in {1}? Me! All for {2}.",
        ),
        (
            "Wow, a {0} for {2}! You're amazing, {x}. How do your legs feel?",
            "{x}, that's incredible! {1} must have been a great place to run a {0}.",
        ),
        ("Sore, but so worth it. We raised more than we hoped.", "My legs are jelly but I'd do it again."),
        ("What cause did {x} run the {1} {0} for?", "Who did {x} raise money for in the {1} {0}?"),
        (
            "Which charity did {x} support through a long-distance event?",
            "What good cause did {x} help by competing on foot?",
        ),
        ("When did {x} run the {0} in {1}?", "When did {x} take part in the {1} {0}?"),
    ),
    "hobby": Event(
        (
            [
                ("pottery", "Mrs. Duarte"),
                ("salsa", "a teacher named Rafael"),
                ("watercolour painting", "Ms. Ilves"),
                ("rock climbing", "a coach called Kofi"),
            ],
            [
                ("ceramics", "Mr. Varga"),
                ("swing dancing", "a woman named Lani"),
                ("woodworking", "Dr. Sato"),
                ("fencing", "a coach named Ingrid"),
            ],
        ),
        (
            "I signed up for {0} classes with {1} at the community center.",
            "Started {0} lessons this week, {1} is teaching me.",
        ),
        (
            "{0}? That's so cool, {x}! Is {1} a good teacher?",
            "Love that for you! How was the first {0} lesson?",
        ),
        ("Very patient with me, I'm hooked already.", "Messy and humbling, but I loved it."),
        ("Who teaches {x}'s {0} classes?", "Who gives {x} {0} lessons?"),
        ("What new pastime has {x} picked up?", "Which creative or sporty activity has {x} begun learning?"),
        ("When did {x} start {0} classes?", "When did {x} begin {0} lessons?"),
    ),
    "wedding": Event(
        (
            [
                ("sister", "Amara", "Savannah"),
                ("brother", "Felix", "a vineyard in Napa"),
                ("cousin", "Delia", "Lake Como"),
                ("best friend", "Jonah", "a barn in Ohio"),
            ],
            [
                ("sister", "Ines", "a castle in Scotland"),
                ("brother", "Theo", "Santorini"),
                ("cousin", "Marisol", "a beach in Maui"),
                ("best friend", "Osman", "the botanical garden"),
            ],
        ),
        (
            "My {0} {1} got married on Saturday in {2}, I gave a speech!",
            "{1}, my {0}, tied the knot last weekend at {2}.",
        ),
        (
            "Congrats to {1}! A wedding in {2} sounds dreamy, {x}.",
            "Aw, tell {1} congrats from me! How was {2}?",
        ),
        (
            "I cried through my whole speech, everyone laughed.",
            "Perfect weather, and the dancing went on till midnight.",
        ),
        ("Where did {x}'s {0} {1} get married?", "Where did {1}, {x}'s {0}, tie the knot?"),
        ("Which relative of {x} had a wedding recently?", "Whose nuptials did {x} attend lately?"),
        ("When did {x}'s {0} {1} get married?", "When was the wedding of {x}'s {0}?"),
    ),
    "concert": Event(
        (
            [
                ("The Lumineers", "the Hollywood Bowl"),
                ("Coldplay", "Wembley Stadium"),
                ("Norah Jones", "the Blue Note"),
                ("Arcade Fire", "Red Rocks"),
            ],
            [
                ("Fleetwood Mac", "Madison Square Garden"),
                ("Adele", "the O2 Arena"),
                ("Bon Iver", "the Fillmore"),
                ("Radiohead", "the Greek Theatre"),
            ],
        ),
        (
            "I finally saw {0} live at {1} last night, it was unreal!",
            "{0} at {1}, front row. I still can't believe it.",
        ),
        (
            "No way, {0}! I'm so jealous, {x}. What did they open with?",
            "{1} is such a great venue, {x}. Was {0} good live?",
        ),
        (
            "Their biggest hit, the whole crowd was singing.",
            "Better than the records, my voice is gone from singing.",
        ),
        ("Where did {x} see {0} live?", "At which venue did {x} watch {0}?"),
        (
            "Which band or singer did {x} go watch in concert?",
            "Which musicians did {x} catch performing lately?",
        ),
        ("When did {x} see {0} live?", "When did {x} go to the {0} show?"),
    ),
}

# Facts that change: told in several sessions, each telling a new value.
CITIES = (
    [
        "Denver",
        "Austin",
        "Portland",
        "Boston",
        "Chicago",
        "Seattle",
        "Atlanta",
        "Phoenix",
        "Toronto",
        "Montreal",
    ],
    [
        "Nashville",
        "Pittsburgh",
        "Sacramento",
        "Baltimore",
        "Minneapolis",
        "Tucson",
        "Raleigh",
        "Ottawa",
        "Calgary",
        "Madison",
    ],
)
MOVE = (
    (["I've been living in {0} for a few years now, I like it.", "Big news: we're moving to {0}! The boxes are everywhere.", "We packed up and moved again, {y}. We're in {0} now."],
     "{0}? That's a big change, {x}! How's the neighbourhood?", "Quiet streets, and a great bakery around the corner."),
    (["These days I'm renting a place in {0}, it's home for now.", "We just relocated to {0}, the new apartment is tiny.", "Another move, {y}: the keys to our {0} place came today."],
     "Oh wow, {0}! How are you finding it, {x}?", "Still getting lost, but the people are so friendly."),
)  # fmt: skip
JOBS = (
    [("nurse", "St. Brigid's hospital"), ("data analyst", "Northwind Logistics"), ("teacher", "Lakeside Academy"), ("pastry chef", "Le Petit Four"), ("architect", "Holm and Berg")],
    [("paramedic", "the county ambulance service"), ("journalist", "the Harbor Gazette"), ("pharmacist", "Greenleaf Pharmacy"), ("graphic designer", "Studio Meridian"), ("accountant", "Pike and Dunn")],
)  # fmt: skip
WORK = (
    (
        "I started a new job as a {0} at {1} this week!",
        "A {0} at {1}! Congrats {x}, how are your coworkers?",
        "Everyone's been welcoming so far.",
    ),
    (
        "Big update: I'm now working as a {0} for {1}.",
        "{1}? That's great, {x}! Do you like being a {0}?",
        "So far it's the best job I've had.",
    ),
)
# (question, style, which telling: "all" | "latest" | "earlier") per half.
MOVE_QUESTIONS = (
    [("Which cities has {x} lived in?", "multi", "all"), ("Where did {x} move after packing up again?", "quote", "latest"),
     ("Where did {x} live before {latest}?", "paraphrase", "earlier")],
    [("In which cities has {x} had a home?", "multi", "all"), ("What is {x}'s current hometown?", "paraphrase", "latest"),
     ("Where was {x} based before {latest}?", "paraphrase", "earlier")],
)  # fmt: skip
WORK_QUESTIONS = (
    [("Which companies has {x} worked for?", "multi", "all"), ("What does {x} do for a living these days?", "paraphrase", "latest"),
     ("Where did {x} work as a {earlier_role}?", "quote", "earlier")],
    [("Which employers has {x} had?", "multi", "all"), ("What is {x}'s current occupation?", "paraphrase", "latest"),
     ("Which organisation employed {x} before {latest_company}?", "paraphrase", "earlier")],
)  # fmt: skip

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]  # fmt: skip


def generate(
    pairs: int = 4,
    sessions_per_pair: int = 24,
    turns: tuple[int, int] = (20, 40),
    seed: int = 7,
    half: int = 0,
) -> Corpus:
    """`pairs` pairs of friends (at most 4), each with `sessions_per_pair` sessions of a number of
    turns drawn from `turns`, from the sentence banks' `half`; the same arguments, the same corpus."""
    rng = random.Random(f"{seed}/{half}")
    people = SPEAKERS[half]
    sessions: list[Session] = []
    questions: list[Question] = []
    for p in range(min(pairs, len(people) // 2)):
        (a, a_their), (b, b_their) = people[2 * p], people[2 * p + 1]
        pair = f"{a} and {b}"
        start = dt.date(2022 + rng.randrange(2), rng.randrange(1, 13), rng.randrange(1, 28))
        dates = [start]
        for _ in range(sessions_per_pair - 1):
            dates.append(dates[-1] + dt.timedelta(days=rng.randrange(5, 22)))
        own = [
            Session(pair, i, f"{pair}, {d.day} {MONTHS[d.month - 1]} {d.year}") for i, d in enumerate(dates)
        ]
        told: dict[int, list[list[tuple[str, str]]]] = {}  # session -> blocks of (speaker, line)
        # The friends' events never share a value: the engine indexes who said a line only as its
        # role, so "Who teaches Joanna ceramics?" would have no answer if Nate took ceramics too.
        taken: set[tuple[str, ...]] = set()
        for who, their, friend in ((a, a_their, b), (b, b_their, a)):
            questions += _plant(rng, half, pair, (who, their, friend), sessions_per_pair, told, taken)
        for session in own:
            _fill(rng, half, session, a, b, told.get(session.index, []), rng.randint(*turns))
        sessions += own
    return Corpus(sessions, questions)


def _plant(
    rng: random.Random,
    half: int,
    pair: str,
    speakers: tuple[str, str, str],
    count: int,
    told: dict[int, list[list[tuple[str, str]]]],
    taken: set[tuple[str, ...]],
) -> list[Question]:
    """One speaker's (x, their pronoun, their friend y) life events and changing facts, placed in
    sessions, with values not in `taken` (which gains them); their questions."""
    x, their, y = speakers
    out: list[Question] = []
    slot = {"x": x, "y": y, "their": their}

    def place(index: int, block: list[tuple[str, str]]) -> str:
        told.setdefault(index, []).append(block)
        return f"{pair}/{index}"

    for kind in rng.sample(sorted(EVENTS), 5):
        event = EVENTS[kind]
        value = rng.choice([v for v in event.values[half] if v not in taken])
        taken.add(value)
        say = (event.told[half], event.reaction[half], event.detail[half])
        lines = [t.format(*value, **slot) for t in say]
        key = place(rng.randrange(count), [(x, lines[0]), (y, lines[1]), (x, lines[2])])
        for style in ("quote", "paraphrase", "when"):
            text = getattr(event, style)[half].format(*value, **slot)
            out.append(Question(text, (key,), kind, style))
    # Changing facts: tellings in increasing sessions.
    cities = rng.sample([c for c in CITIES[half] if (c,) not in taken], 3)
    taken.update((c,) for c in cities)
    lines, reaction, detail = MOVE[half]
    keys = [
        place(i, [(x, lines[n].format(city, **slot)), (y, reaction.format(city, **slot)), (x, detail)])
        for n, (i, city) in enumerate(zip(sorted(rng.sample(range(count), 3)), cities, strict=True))
    ]
    for ask, style, which in MOVE_QUESTIONS[half]:
        text = ask.format(latest=cities[-1], **slot)
        out.append(Question(text, _which(keys, which), "city", style))
    jobs = rng.sample([j for j in JOBS[half] if j not in taken], 2)
    taken.update(jobs)
    told_at = sorted(rng.sample(range(count), 2))
    line, reaction, detail = WORK[half]
    keys = [
        place(i, [(x, line.format(*job, **slot)), (y, reaction.format(*job, **slot)), (x, detail)])
        for i, job in zip(told_at, jobs, strict=True)
    ]
    for ask, style, which in WORK_QUESTIONS[half]:
        text = ask.format(earlier_role=jobs[0][0], latest_company=jobs[-1][1], **slot)
        out.append(Question(text, _which(keys, which), "job", style))
    return out


def _which(keys: list[str], which: str) -> tuple[str, ...]:
    # "earlier": the value before the latest one.
    return tuple(keys) if which == "all" else (keys[-1],) if which == "latest" else (keys[-2],)


def _fill(
    rng: random.Random,
    half: int,
    session: Session,
    a: str,
    b: str,
    blocks: list[list[tuple[str, str]]],
    turns: int,
) -> None:
    """Greetings, chit-chat with the session's events among it, goodbyes; A is `user`, B `assistant`."""

    def exchange(opener: str, first: str, answer: str, vary: bool = False) -> list[tuple[str, str]]:
        # Both lines take the opener's slots: {x} is the opener, {y} the friend they address.
        other = _other(opener, a, b)
        fill = {name: rng.choice(choices) for name, choices in FILLERS[half].items()}
        said = [first.format(x=opener, y=other, **fill), answer.format(x=opener, y=other, **fill)]
        if vary:
            said = [_varied(rng, half, line) for line in said]
        return [(opener, said[0]), (other, said[1])]

    lines = exchange(rng.choice([a, b]), *rng.choice(GREETINGS[half]))
    middle: list[list[tuple[str, str]]] = [list(block) for block in blocks]
    budget = turns - 4 - sum(len(block) for block in blocks)
    chat = rng.sample(CHITCHAT[half], len(CHITCHAT[half]))
    while budget > 0 and chat:
        middle.insert(rng.randrange(len(middle) + 1), exchange(rng.choice([a, b]), *chat.pop(), vary=True))
        budget -= 2
    for block in middle:
        lines += block
    lines += exchange(rng.choice([a, b]), *rng.choice(GOODBYES[half]))
    session.messages += [("user" if speaker == a else "assistant", text) for speaker, text in lines]


def _varied(rng: random.Random, half: int, line: str) -> str:
    """The line with one of OPENINGS before it and one of CLOSINGS in place of its final stop."""
    opening, closing = rng.choice(OPENINGS[half]), rng.choice(CLOSINGS[half])
    if opening:
        line = opening + (line if line.startswith(("I ", "I'")) else line[0].lower() + line[1:])
    if closing and line.endswith((".", "!")):  # a question keeps its question mark
        line = line[:-1] + closing
    return line


def _other(speaker: str, a: str, b: str) -> str:
    return b if speaker == a else a
