# cmake -DIN=file.fatbin -DOUT=header.h -DNAME=symbol -P embed_fatbin.cmake:
# the fatbin as an aligned byte array a C++ file includes.
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE "${OUT}" "// Generated from ${IN}; do not edit.\n#pragma once\nalignas(64) static const unsigned char ${NAME}[] = {${bytes}};\n")
