"""Caption cleaning on real metadata from Debian openclipart-svg 1:0.18+dfsg-19.

Each case is (title, description, file stem, creator) copied from one SVG, so the tests
run without the package installed.
"""

import pytest

from data_tools.openclipart_captions import MAX_CAPTION_CHARS, clean_caption, truncate

FLAT_ICON_TITLE = "Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)"
SIGNAL_FLAG_HISTORY = (
    "From at least the time of the ancient Athenians, admirals have hoisted various flags as signals "
    "to other members of the fleet to take various actions."
)


@pytest.mark.parametrize(
    ("title", "description", "stem", "creator", "expected"),
    [
        # Plain titles pass through.
        ("Soft Blue Couch", "", "soft_blue_couch_jonadab_01", "Jonadab", "Soft Blue Couch"),
        # File-name junk in the title: underscores, hyphens, glued and leading-zero numbering.
        ("padlock_unlocked_silhouette", "", "padlock_unlocked_silhou_01", "A.J. Ashton",
         "padlock unlocked silhouette"),
        ("button-yellow", "", "button-yellow_benji_park_01", "Benji Park", "button yellow"),
        ("RoundPointShovel", "", "roundpointshovel_benji_p_01", "Benji Park", "Round Point Shovel"),
        ("Aircraft3", "aircraft", "aircraft_jarno_vasamaa2", "Jarno Vasamaa", "Aircraft"),
        ("Woman Fashion 01", "Woman Fashion 01", "woman_fashion_01_01", "Gerald G.", "Woman Fashion"),
        # Author name inside the title.
        ("Bibliografia Francesco Rollandin", "", "bibliografia_francesco__01",
         "Architetto Francesco Rollandin", "Bibliografia"),
        # Theme boilerplate: the caption comes from the file name plus what kind of picture it is.
        ("Lemon SVG theme", "", "gimp", "Jose Hevia", "gimp icon"),
        (FLAT_ICON_TITLE, "", "folder_bomb", "Danny Allen", "folder bomb icon"),
        ("AIGA_Symbol_Signs", "EPS converted from  http://aiga.org", "aiga_baggage_check_in1",
         "Jean-Victor Balin", "baggage check in sign"),
        ("SVG Road Signs", "", "curve_ahead", "John Cliff", "curve ahead road sign"),
        ("SVG Gradient Collection by Alan Horkan, 2004.", "", "gradient-peach", "Alan Horkan",
         "peach gradient"),
        ("Map Symbols", "", "daylily_0_symbol_1m_bwh", "Bryce W. Harrington", "daylily map symbol"),
        ("gramastar", "", "star_22pt03step", "codifiedivining", "star polygon with 22 points, step 3"),
        ("card", "", "simple_c_k", "Nicu Buculei", "the king of clubs playing card, simple design"),
        ("card", "", "back04", "Nicu Buculei", "the back of a playing card"),
        # The part after the dash was copied between files: car.svg is not a piggy bank.
        ("Clipart by Nicu Buculei - piggybank", "", "car", "Nicu Buculei", "car"),
        # Author signatures and tooling notes in the description are dropped.
        ("pansement", "jean.victor.balin@gmail.com", "pansement_jean_victor_ba_", "Jean-Victor Balin",
         "pansement"),
        ("Baby-Tux", "Made with Sodipodi", "baby_tux_01", "Rory McCann", "Baby Tux"),
        ("PC connectors", "HASH(0x8677e2c)", "pc_connectors_01", "Ricardo", "PC connectors"),
        ("Dino", "Architetto Francesco Rollandin", "dino_architetto_francesc_01",
         "Architetto Francesco Rollandin", "Dino"),
        ("Lowtec House", "A house I drew for lincity-ng", "lowtec_house_01", "Kevin", "Lowtec House"),
        ("Pizza Slice", "A pizza slice. Created by ringe. Email: ri@rin.no.", "pizza_slice_01", "ringe",
         "A pizza slice"),
        ("international maritime signal flag 3", SIGNAL_FLAG_HISTORY, "signalflag_3",
         "International Code of Signals", "international maritime signal flag 3"),
        # Provenance clauses go, what they describe stays.
        ("Hub", "A small five port hub, edited from andrew fitzsimons scanner.", "hub_01", "Jeff",
         "A small five port hub"),
        # A description that repeats the title adds nothing ...
        ("Rubber Duck (Open Bill)", "Rubber Duck", "rubber_duck2_ganson", "Gerald G.",
         "Rubber Duck (Open Bill)"),
        ("Milk (B and W)", "Milk", "milk_bw", "Gerald G.", "Milk (black and white)"),
        # ... one that contains the title replaces it ...
        ("mug", "coffee mug", "mug_toh_yen_cheng_01", "Toh Yen Cheng", "coffee mug"),
        ("Stop Sign",
         "An American street sign: stop. A red and white octagon with the word STOP in the center.",
         "stop", "Richard D. Worth",
         "An American street sign: stop. A red and white octagon with the word STOP in the center"),
        # ... and one that adds information is appended.
        ("Tempus Fugit", "Mechanical horse jumping over a clock", "mechorse", "Kurt Cagle",
         "Tempus Fugit. Mechanical horse jumping over a clock"),
        ("Aragón", "a simple map of aragon region, enjoy it!", "aragon_01", "Pablo",
         "a simple map of aragon region"),
    ],
)
def test_clean_caption_on_real_examples(title, description, stem, creator, expected):
    assert clean_caption(title, description, stem, creator) == expected


@pytest.mark.parametrize(
    ("title", "stem", "creator"),
    [
        ("Mirjam Meijer", "mirjam_meijer_mirjam_mei_01", "Mirjam Meijer"),  # title is the author
        ("ralf@ark.in-berlin.de", "ralf_ark.in-berlin.de_ra_01", "ralf@ark.in-berlin.de"),
        ("gold-theme", "70a029", "Juliane Krug"),  # theme title and a numbered file name
        ("plastik-icon-theme", "plastik_icon_v14", "Juliane Krug"),
        ("Mr", "mr_lakshman_poonyth_", "Lakshman Poonyth"),
    ],
)
def test_uninformative_samples_are_dropped(title, stem, creator):
    assert clean_caption(title, "", stem, creator) is None


def test_long_descriptions_are_cut_at_a_sentence_end():
    description = (
        "Lindworms, also called Lindorms or Lindorm Snakes, were monsters in the ancient world that may "
        "have lived as late as the thirteenth century.  Swifter than it looks, one of these beasts was "
        "capable of overtaking a man on a galloping horse."
    )
    caption = clean_caption("Lindworm Snake", description, "lindworm_snake_01", "Gerald G.")
    assert caption is not None and len(caption) <= MAX_CAPTION_CHARS
    assert caption.endswith("thirteenth century.")


def test_truncate_falls_back_to_a_word_boundary():
    text = "word " * 60
    cut = truncate(text, limit=42)
    assert len(cut) <= 42 and cut.endswith("word")
