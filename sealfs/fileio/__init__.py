"""File I/O: the contents of file objects, read and written.

``context``  what the layer works with (store, layout, keys, threads, part sizes)
``reader``   authenticated random and streaming reads of one file version
``writer``   a new version of a file object built and uploaded in one go
``streams``  a new version uploaded while its file is still being written

It takes entries and their sealed user metadata in and gives new etags
out; sealing metadata, and everything else about entries, is the
volume's.  It imports only the store, the codec and the errors.
"""
