"""How good the network and an index are: classification error on a labelled folder,
centre crop and the paper's ten crops (`classification`, imports torch), and
leave-one-out retrieval precision and mAP of an index (`retrieval`, FAISS and numpy;
torch only to train autoencoders for its code rows); and an image's top-5 classes
(`predict`, `alexsearch classify`: torch only for the ten crops).
"""
