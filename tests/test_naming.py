"""Block ids and layer names: written and parsed back by epsresnet_tf.naming alone."""

import pytest

from epsresnet_tf import naming as N
from epsresnet_tf.errors import UserError


def test_block_ids_and_prefixes_round_trip():
    assert N.block_id(2, 11) == "group2/block11"
    assert N.parse_block_id("group2/block11") == (2, 11)
    assert N.layer_prefix(1, 3) == "group1_block3_"
    assert N.block_of_layer_name(N.layer_prefix(1, 3) + "conv1") == "group1/block3"
    assert N.split_layer_name("group1_block3_conv1/kernel") == (1, 3, "conv1/kernel")
    assert N.split_transition_name(N.transition_prefix(2) + "shortcut_conv") == (2, "shortcut_conv")
    assert N.block_of_layer_name("head_fc") is None
    assert N.split_transition_name("group1_block0_add") is None


def test_sort_is_network_order_and_bad_ids_are_user_errors():
    assert N.sort_block_ids(["group1/block10", "group0/block2", "group1/block9"]) == [
        "group0/block2",
        "group1/block9",
        "group1/block10",
    ]
    with pytest.raises(UserError, match="bad block id"):
        N.parse_block_id("group1_block0")
