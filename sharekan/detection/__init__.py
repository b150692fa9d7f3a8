"""Detection on PASCAL VOC: data, frozen backbone features, KAN head, training and scoring."""
